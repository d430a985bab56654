//! Throughput of the notes OT core (`linkedup_schema::ot`): transform, apply and compose on
//! realistic edits (a few components at random positions) of a multi-KB note with emoji and
//! CJK. Prints rates; run with `cargo run --release -p linkedup-benches --bin ot`.

use std::hint::black_box;
use std::time::Instant;

use clap::Parser;
use linkedup_schema::ot::TextOperation;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Parser, Debug)]
#[command(about = "Text OT throughput")]
struct Args {
    /// Approximate document size in bytes (UTF-8).
    #[arg(long, default_value_t = 6_000)]
    doc_bytes: usize,
    /// Distinct concurrent op pairs generated against the document.
    #[arg(long, default_value_t = 10_000)]
    pairs: usize,
    /// Passes over all pairs per measurement.
    #[arg(long, default_value_t = 50)]
    rounds: usize,
    /// Committed ops a server-side transform walks past (the `transformAgainst` loop).
    #[arg(long, default_value_t = 10)]
    history: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

const WORDS: &[&str] = &[
    "meeting ",
    "notes ",
    "action ",
    "item ",
    "👍🏽 ",
    "🎉 ",
    "会议 ",
    "记录 ",
    "café ",
    "e\u{301} ",
    "follow-up\n",
    "- ",
    "Q3 ",
    "roadmap ",
];

fn random_words(rng: &mut StdRng, max_words: usize) -> String {
    (0..rng.gen_range(1..=max_words))
        .map(|_| WORDS[rng.gen_range(0..WORDS.len())])
        .collect()
}

fn document(rng: &mut StdRng, bytes: usize) -> String {
    let mut doc = String::with_capacity(bytes + 32);
    while doc.len() < bytes {
        doc.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
    }
    doc
}

/// One to three inserts or deletes at random positions of a `len`-char document.
fn random_op(rng: &mut StdRng, len: u64) -> TextOperation {
    let mut positions: Vec<u64> = (0..rng.gen_range(1..=3))
        .map(|_| rng.gen_range(0..=len))
        .collect();
    positions.sort_unstable();
    let mut op = TextOperation::new();
    let mut at = 0;
    for p in positions {
        if p < at {
            continue;
        }
        op = op.retain(p - at);
        at = p;
        if rng.gen_bool(0.6) {
            op = op.insert(&random_words(rng, 3));
        } else {
            let n = rng.gen_range(1..=12).min(len - at);
            op = op.delete(n);
            at += n;
        }
    }
    op.retain(len - at)
}

/// Prints and returns the elapsed seconds.
fn rate(label: &str, count: usize, start: Instant) -> f64 {
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{label:<34} {count:>10} in {secs:>7.3} s  = {:>12.0} /s",
        count as f64 / secs
    );
    secs
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut rng = StdRng::seed_from_u64(args.seed);
    let doc = document(&mut rng, args.doc_bytes);
    let len = doc.chars().count() as u64;
    let pairs: Vec<(TextOperation, TextOperation)> = (0..args.pairs.max(1))
        .map(|_| (random_op(&mut rng, len), random_op(&mut rng, len)))
        .collect();
    let components: usize = pairs
        .iter()
        .map(|(a, b)| a.components().len() + b.components().len())
        .sum();
    println!(
        "document: {} bytes, {len} chars; {} op pairs, {:.1} components/op",
        doc.len(),
        pairs.len(),
        components as f64 / (2 * pairs.len()) as f64
    );

    let start = Instant::now();
    let mut n = 0;
    for _ in 0..args.rounds {
        for (a, b) in &pairs {
            black_box(TextOperation::transform(black_box(a), black_box(b))?);
            n += 1;
        }
    }
    rate("transform(a, b)", n, start);

    // Server path: one incoming op transformed past `history` committed ops.
    let chains: Vec<(Vec<TextOperation>, TextOperation)> = (0..(args.pairs / 10).max(1))
        .map(|_| {
            let incoming = random_op(&mut rng, len);
            let mut current = len;
            let committed = (0..args.history)
                .map(|_| {
                    let op = random_op(&mut rng, current);
                    current = op.target_len();
                    op
                })
                .collect();
            (committed, incoming)
        })
        .collect();
    let start = Instant::now();
    let mut n = 0;
    for _ in 0..args.rounds {
        for (committed, incoming) in &chains {
            let mut op = incoming.clone();
            for c in committed {
                op = TextOperation::transform(c, &op)?.1;
            }
            black_box(op);
            n += committed.len();
        }
    }
    rate(
        &format!("transform in {}-op server chain", args.history),
        n,
        start,
    );

    let transformed: Vec<(TextOperation, TextOperation)> = pairs
        .iter()
        .map(|(a, b)| Ok((a.clone(), TextOperation::transform(a, b)?.1)))
        .collect::<anyhow::Result<_>>()?;
    let start = Instant::now();
    let mut n = 0;
    for _ in 0..args.rounds {
        for (a, b_prime) in &transformed {
            black_box(a.compose(b_prime)?);
            n += 1;
        }
    }
    rate("compose(a, b')", n, start);

    let apply_rounds = args.rounds.div_ceil(10);
    let start = Instant::now();
    let mut n = 0;
    for _ in 0..apply_rounds {
        for (a, _) in &pairs {
            black_box(a.apply(black_box(&doc))?);
            n += 1;
        }
    }
    let secs = rate(&format!("apply to {}-byte doc", doc.len()), n, start);
    println!(
        "apply throughput: {:.0} MB/s of document",
        (n * doc.len()) as f64 / secs / 1e6
    );
    Ok(())
}
