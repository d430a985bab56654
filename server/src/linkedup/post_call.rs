//! The post-call jobs `meetings.end` schedules: transcript aggregation (`transcripts`) and
//! per-participant insight generation (`insights`).

pub(crate) use super::insights::schedule_generation as schedule_insights;
pub use super::insights::GENERATE as INSIGHTS_GENERATE;
pub use super::transcripts::fns::AGGREGATE_SEGMENTS as TRANSCRIPTS_AGGREGATE;
