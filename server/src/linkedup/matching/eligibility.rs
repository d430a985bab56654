//! The hard constraints of a match, as a pure function of the two parties: no score makes up
//! for failing one. Checked when a cycle picks candidates and again, on freshly read parties,
//! when the match commits.

use linkedup_schema::api::matching::OrgConstraint;

use super::parties::Party;

/// The settings the hard constraints depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// The two windows must share at least this much time from now on.
    pub min_meeting_ms: i64,
    /// When both sides list languages, they must share one.
    pub require_shared_language: bool,
}

/// Why a pair may not be matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ineligible {
    SameUser,
    /// A side is inactive, gone, or has the `matching` flag off.
    CannotMatch,
    NoCommonTime,
    /// A side's `orgConstraints` excludes the other.
    Organisation,
    NoSharedLanguage,
    /// A block either way, a declined connection, or a match either declined within the
    /// cool-down.
    DoNotMatch,
}

/// Checks every hard constraint of matching `a` with `b` at `now_ms`.
pub fn check(a: &Party, b: &Party, now_ms: i64, rules: &Rules) -> Result<(), Ineligible> {
    if a.user_id == b.user_id {
        return Err(Ineligible::SameUser);
    }
    if !(a.can_match && b.can_match) {
        return Err(Ineligible::CannotMatch);
    }
    if common_time_ms(a, b, now_ms) < rules.min_meeting_ms {
        return Err(Ineligible::NoCommonTime);
    }
    if !(accepts(a, b) && accepts(b, a)) {
        return Err(Ineligible::Organisation);
    }
    let both_listed = !a.languages.is_empty() && !b.languages.is_empty();
    if rules.require_shared_language && both_listed && a.languages.is_disjoint(&b.languages) {
        return Err(Ineligible::NoSharedLanguage);
    }
    if a.do_not_match.contains(&b.user_id) || b.do_not_match.contains(&a.user_id) {
        return Err(Ineligible::DoNotMatch);
    }
    Ok(())
}

/// How long both are available from `now_ms` on (0 if they are not).
pub fn common_time_ms(a: &Party, b: &Party, now_ms: i64) -> i64 {
    let start = a.available_from.max(b.available_from).max(now_ms);
    let end = a.available_to.min(b.available_to);
    end.saturating_sub(start).max(0)
}

/// Whether `p` can still meet anyone: its own window has `min_meeting_ms` left.
pub fn can_still_meet(p: &Party, now_ms: i64, rules: &Rules) -> bool {
    common_time_ms(p, p, now_ms) >= rules.min_meeting_ms
}

/// Whether `own`'s organisation constraint lets it meet `other`.
fn accepts(own: &Party, other: &Party) -> bool {
    match own.org_constraint {
        None => true,
        Some(OrgConstraint::SameOrg) => own.org_id.is_some() && own.org_id == other.org_id,
        Some(OrgConstraint::OtherOrgs) => own.org_id.is_none() || own.org_id != other.org_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;
    const RULES: Rules = Rules {
        min_meeting_ms: HOUR / 2,
        require_shared_language: true,
    };

    fn p(user: &str, org: Option<&str>, from: i64, to: i64) -> Party {
        Party {
            entry_id: format!("e-{user}"),
            user_id: user.into(),
            org_id: org.map(String::from),
            can_match: true,
            available_from: from,
            available_to: to,
            ..Party::default()
        }
    }

    #[test]
    fn each_hard_constraint_refuses_on_either_side() {
        let a = p("a", Some("o1"), 0, 2 * HOUR);
        let b = p("b", Some("o2"), HOUR, 3 * HOUR);
        assert_eq!(check(&a, &b, 0, &RULES), Ok(()));
        assert_eq!(check(&a, &a, 0, &RULES), Err(Ineligible::SameUser));
        // Windows: one hour in common, half of it left at 1.5 h, none at 1.75 h.
        assert_eq!(check(&a, &b, HOUR + HOUR / 2, &RULES), Ok(()));
        assert_eq!(
            check(&a, &b, HOUR + 3 * HOUR / 4, &RULES),
            Err(Ineligible::NoCommonTime)
        );
        let late = p("c", Some("o1"), 2 * HOUR, 3 * HOUR);
        assert_eq!(check(&a, &late, 0, &RULES), Err(Ineligible::NoCommonTime));
        for (x, y) in [(&a, &b), (&b, &a)] {
            let mut same = x.clone();
            same.org_constraint = Some(OrgConstraint::SameOrg);
            assert_eq!(check(&same, y, 0, &RULES), Err(Ineligible::Organisation));
            assert_eq!(check(y, &same, 0, &RULES), Err(Ineligible::Organisation));
            let mut off = x.clone();
            off.can_match = false;
            assert_eq!(check(&off, y, 0, &RULES), Err(Ineligible::CannotMatch));
            let mut blocking = x.clone();
            blocking.do_not_match.insert(y.user_id.clone());
            assert_eq!(check(&blocking, y, 0, &RULES), Err(Ineligible::DoNotMatch));
            assert_eq!(check(y, &blocking, 0, &RULES), Err(Ineligible::DoNotMatch));
        }
        let mut colleague = p("d", Some("o1"), 0, 2 * HOUR);
        colleague.org_constraint = Some(OrgConstraint::OtherOrgs);
        assert_eq!(
            check(&a, &colleague, 0, &RULES),
            Err(Ineligible::Organisation)
        );
        assert_eq!(check(&b, &colleague, 0, &RULES), Ok(()));
        colleague.org_constraint = Some(OrgConstraint::SameOrg);
        assert_eq!(check(&a, &colleague, 0, &RULES), Ok(()));
    }

    #[test]
    fn languages_must_be_shared_only_when_both_list_some() {
        let mut a = p("a", None, 0, HOUR);
        let mut b = p("b", None, 0, HOUR);
        a.languages.insert("en".into());
        assert_eq!(check(&a, &b, 0, &RULES), Ok(()));
        b.languages.insert("de".into());
        assert_eq!(check(&a, &b, 0, &RULES), Err(Ineligible::NoSharedLanguage));
        let lenient = Rules {
            require_shared_language: false,
            ..RULES
        };
        assert_eq!(check(&a, &b, 0, &lenient), Ok(()));
        b.languages.insert("en".into());
        assert_eq!(check(&a, &b, 0, &RULES), Ok(()));
    }
}
