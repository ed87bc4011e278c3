//! Authorization: who may pull, push and delete in which repositories, from `[[auth.rules]]`
//! and `[auth.groups]`. Without rules, every authenticated user may do everything and an
//! anonymous client nothing (distribution's htpasswd behaviour).

use std::collections::BTreeMap;

use crate::config::AccessRule;

/// What a request does to a repository. The names are the token spec's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Reading manifests, blobs, tags and referrers.
    Pull,
    /// Uploading blobs and pushing manifests and tags.
    Push,
    /// Deleting manifests, tags and blobs.
    Delete,
}

impl Action {
    /// All three, in the order scopes list them.
    pub const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];

    /// The action's name in scopes and rules.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    /// The action a scope names; `*` is all of them.
    pub fn parse(name: &str) -> Vec<Action> {
        match name {
            "pull" => vec![Action::Pull],
            "push" => vec![Action::Push],
            "delete" => vec![Action::Delete],
            "*" => Action::ALL.to_vec(),
            _ => Vec::new(),
        }
    }
}

/// The caller a rule is checked for: a user name, or nobody.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller<'a> {
    /// A client without credentials.
    Anonymous,
    /// An authenticated user.
    User(&'a str),
}

/// The rules, compiled.
#[derive(Debug)]
pub struct Rules {
    /// `None`: no rules were written; authenticated users may do everything.
    rules: Option<Vec<Rule>>,
}

#[derive(Debug)]
struct Rule {
    repos: Vec<String>,
    /// User names (with `*` and `anonymous`), group members already added.
    users: Vec<String>,
    actions: Vec<Action>,
}

impl Rules {
    /// Compiles `[[auth.rules]]` with their groups (the configuration was validated).
    pub fn new(rules: &[AccessRule], groups: &BTreeMap<String, Vec<String>>) -> Rules {
        if rules.is_empty() {
            return Rules { rules: None };
        }
        let compiled = rules
            .iter()
            .map(|r| {
                let mut users = r.users.clone();
                for g in &r.groups {
                    users.extend(groups.get(g).into_iter().flatten().cloned());
                }
                Rule {
                    repos: r.repos.clone(),
                    users,
                    actions: r.actions.iter().flat_map(|a| Action::parse(a)).collect(),
                }
            })
            .collect();
        Rules {
            rules: Some(compiled),
        }
    }

    /// Whether `caller` may do `action` in `repo`.
    pub fn allows(&self, caller: Caller<'_>, repo: &str, action: Action) -> bool {
        let Some(rules) = &self.rules else {
            return matches!(caller, Caller::User(_));
        };
        rules.iter().any(|r| {
            r.actions.contains(&action)
                && r.users.iter().any(|u| match caller {
                    Caller::Anonymous => u == "anonymous",
                    Caller::User(name) => u == "*" || u == name,
                })
                && r.repos.iter().any(|p| matches(p, repo))
        })
    }

    /// Whether any rule lets anonymous clients in anywhere (then listings answer them too).
    pub fn any_anonymous(&self) -> bool {
        self.rules
            .iter()
            .flatten()
            .any(|r| r.users.iter().any(|u| u == "anonymous"))
    }
}

/// Glob matching where `*` is any run of characters (slashes included) and everything else
/// matches itself.
pub fn matches(pattern: &str, name: &str) -> bool {
    let p = pattern.as_bytes();
    let n = name.as_bytes();
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was, and how much of the name it has swallowed so far.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(repos: &[&str], users: &[&str], groups: &[&str], actions: &[&str]) -> AccessRule {
        let v = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect();
        AccessRule {
            repos: v(repos),
            users: v(users),
            groups: v(groups),
            actions: v(actions),
        }
    }

    #[test]
    fn patterns() {
        assert!(matches("*", "a/b/c"));
        assert!(matches("team/*", "team/app"));
        assert!(matches("team/*", "team/app/sub"));
        assert!(!matches("team/*", "teams/app"));
        assert!(!matches("team/*", "team"));
        assert!(matches("*/base", "x/y/base"));
        assert!(!matches("*/base", "x/y/based"));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(!matches("a*b*c", "aXXbYY"));
        assert!(matches("exact", "exact"));
        assert!(!matches("exact", "exactly"));
    }

    #[test]
    fn without_rules_users_may_everything_and_anonymous_nothing() {
        let r = Rules::new(&[], &BTreeMap::new());
        for a in Action::ALL {
            assert!(r.allows(Caller::User("x"), "any/repo", a));
            assert!(!r.allows(Caller::Anonymous, "any/repo", a));
        }
        assert!(!r.any_anonymous());
    }

    #[test]
    fn rules_grant_per_pattern_user_group_and_action() {
        let groups = BTreeMap::from([("ci".to_owned(), vec!["robot".to_owned()])]);
        let r = Rules::new(
            &[
                rule(&["team/*"], &["alice"], &["ci"], &["pull", "push"]),
                rule(&["public/*"], &["anonymous", "*"], &[], &["pull"]),
                rule(&["*"], &["admin"], &[], &["*"]),
            ],
            &groups,
        );
        assert!(r.allows(Caller::User("alice"), "team/app", Action::Push));
        assert!(!r.allows(Caller::User("alice"), "team/app", Action::Delete));
        assert!(!r.allows(Caller::User("alice"), "other/app", Action::Pull));
        assert!(r.allows(Caller::User("robot"), "team/app", Action::Push));
        assert!(r.allows(Caller::Anonymous, "public/x", Action::Pull));
        assert!(!r.allows(Caller::Anonymous, "public/x", Action::Push));
        assert!(!r.allows(Caller::Anonymous, "team/app", Action::Pull));
        assert!(r.allows(Caller::User("bob"), "public/x", Action::Pull));
        assert!(r.allows(Caller::User("admin"), "x", Action::Delete));
        assert!(r.any_anonymous());
    }
}
