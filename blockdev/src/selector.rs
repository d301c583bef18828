//! Choosing a partition by what a maintainer knows about it: `number:3`, `name:DATA` (the GPT
//! partition name), `label:Windows` (the filesystem's label), `type:basic-data` (a GPT type by
//! alias or GUID). A bare string is a GPT name, as image hints were before selectors.
//!
//! A selector that matches two partitions is refused with the candidates listed, never resolved
//! by guess: Windows Setup names both the Windows and the Recovery partition "Basic data
//! partition", and picking the first would restore a client's files into Recovery.

use std::fmt;

/// GPT type aliases accepted by `type:` (GUIDs in canonical upper-case form).
pub const TYPE_ALIASES: &[(&str, &str)] = &[
    ("basic-data", "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"),
    ("esp", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
    ("msr", "E3C9E316-0B5C-4DB8-817D-F92DF00215AE"),
    ("recovery", "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC"),
    ("linux", "0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
    ("linux-home", "933AC7E1-2EB4-4F13-B844-0E14E2AEF915"),
];

/// Which partition a hint means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionSelector {
    /// 1-based GPT partition number.
    Number(u32),
    /// GPT partition name (exact).
    Name(String),
    /// Filesystem label (exact).
    Label(String),
    /// GPT partition type GUID (upper-case canonical form).
    Type(String),
}

/// Why a selector could not be parsed or resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// The text is not a selector.
    #[error("{text:?} is not a partition selector: {reason}")]
    Syntax {
        /// The text given.
        text: String,
        /// What is wrong.
        reason: String,
    },
    /// Nothing matches.
    #[error("no partition matches {selector} (partitions: {candidates})")]
    NoMatch {
        /// The selector, as written.
        selector: String,
        /// Every partition, described.
        candidates: String,
    },
    /// More than one partition matches; tek does not guess.
    #[error(
        "{selector} is ambiguous: it matches {candidates}; choose one with number:N, label:L or \
         type:T"
    )]
    Ambiguous {
        /// The selector, as written.
        selector: String,
        /// The matching partitions, described.
        candidates: String,
    },
}

/// What a selector is matched against: one partition.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartitionFacts {
    /// 1-based number.
    pub number: u32,
    /// GPT name.
    pub name: String,
    /// GPT type GUID (any case).
    pub type_guid: String,
    /// Filesystem label, where known.
    pub label: Option<String>,
}

impl fmt::Display for PartitionFacts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "number:{} name:\"{}\"",
            self.number,
            self.name.escape_debug()
        )?;
        if let Some(l) = &self.label {
            write!(f, " label:\"{}\"", l.escape_debug())?;
        }
        let ty = self.type_guid.to_uppercase();
        match TYPE_ALIASES.iter().find(|(_, g)| *g == ty) {
            Some((alias, _)) => write!(f, " type:{alias}"),
            None => write!(f, " type:{ty}"),
        }
    }
}

impl PartitionSelector {
    /// Parses `number:N`, `name:X`, `label:X`, `type:ALIAS|GUID`; anything else is a GPT name.
    pub fn parse(text: &str) -> Result<PartitionSelector, SelectError> {
        let syntax = |reason: &str| SelectError::Syntax {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        let Some((kind, value)) = text.split_once(':') else {
            return Ok(PartitionSelector::Name(text.to_string()));
        };
        match kind {
            "number" => match value.parse::<u32>() {
                Ok(n) if n > 0 => Ok(PartitionSelector::Number(n)),
                _ => Err(syntax("number: takes a partition number from 1")),
            },
            "name" => Ok(PartitionSelector::Name(value.to_string())),
            "label" if value.is_empty() => Err(syntax("label: needs a label")),
            "label" => Ok(PartitionSelector::Label(value.to_string())),
            "type" => {
                if let Some((_, g)) = TYPE_ALIASES.iter().find(|(a, _)| *a == value) {
                    return Ok(PartitionSelector::Type(g.to_string()));
                }
                let g = value.to_uppercase();
                let shape = g.len() == 36
                    && g.char_indices().all(|(i, c)| {
                        if [8, 13, 18, 23].contains(&i) {
                            c == '-'
                        } else {
                            c.is_ascii_hexdigit()
                        }
                    });
                if shape {
                    Ok(PartitionSelector::Type(g))
                } else {
                    let aliases: Vec<_> = TYPE_ALIASES.iter().map(|(a, _)| *a).collect();
                    Err(syntax(&format!(
                        "type: takes a GPT type GUID or one of {}",
                        aliases.join(", ")
                    )))
                }
            }
            // A GPT name may hold a colon: only the four kinds above are selectors.
            _ => Ok(PartitionSelector::Name(text.to_string())),
        }
    }

    /// True if this selector needs filesystem labels to be resolved.
    pub fn needs_labels(&self) -> bool {
        matches!(self, PartitionSelector::Label(_))
    }

    fn matches(&self, p: &PartitionFacts) -> bool {
        match self {
            PartitionSelector::Number(n) => p.number == *n,
            PartitionSelector::Name(s) => &p.name == s,
            PartitionSelector::Label(l) => p.label.as_ref() == Some(l),
            PartitionSelector::Type(g) => p.type_guid.eq_ignore_ascii_case(g),
        }
    }

    /// The one partition of `parts` this selector means.
    pub fn resolve<'a>(
        &self,
        parts: &'a [PartitionFacts],
    ) -> Result<&'a PartitionFacts, SelectError> {
        let hits: Vec<&PartitionFacts> = parts.iter().filter(|p| self.matches(p)).collect();
        let list = |ps: &mut dyn Iterator<Item = &PartitionFacts>| {
            let v: Vec<String> = ps.map(|p| format!("[{p}]")).collect();
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        match hits.as_slice() {
            [one] => Ok(one),
            [] => Err(SelectError::NoMatch {
                selector: self.to_string(),
                candidates: list(&mut parts.iter()),
            }),
            many => Err(SelectError::Ambiguous {
                selector: self.to_string(),
                candidates: list(&mut many.iter().copied()),
            }),
        }
    }
}

impl fmt::Display for PartitionSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartitionSelector::Number(n) => write!(f, "number:{n}"),
            PartitionSelector::Name(s) => write!(f, "name:{s:?}"),
            PartitionSelector::Label(s) => write!(f, "label:{s:?}"),
            PartitionSelector::Type(g) => match TYPE_ALIASES.iter().find(|(_, a)| a == g) {
                Some((alias, _)) => write!(f, "type:{alias}"),
                None => write!(f, "type:{g}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows() -> Vec<PartitionFacts> {
        let p = |number, name: &str, ty: &str, label: Option<&str>| PartitionFacts {
            number,
            name: name.into(),
            type_guid: ty.into(),
            label: label.map(Into::into),
        };
        vec![
            p(
                1,
                "EFI system partition",
                "c12a7328-f81f-11d2-ba4b-00a0c93ec93b",
                Some("SYSTEM"),
            ),
            p(
                2,
                "Microsoft reserved partition",
                "E3C9E316-0B5C-4DB8-817D-F92DF00215AE",
                None,
            ),
            p(
                3,
                "Basic data partition",
                "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
                Some("Windows"),
            ),
            p(
                4,
                "Basic data partition",
                "DE94BBA4-06D1-4D40-A16A-BFD50179D6AC",
                Some("Recovery"),
            ),
        ]
    }

    #[test]
    fn each_kind_resolves_and_ambiguity_is_refused() {
        let parts = windows();
        for text in [
            "number:3",
            "label:Windows",
            "type:basic-data",
            "type:ebd0a0a2-b9e5-4433-87c0-68b6b72699c7",
        ] {
            let s = PartitionSelector::parse(text).unwrap();
            assert_eq!(s.resolve(&parts).unwrap().number, 3, "{text}");
        }
        assert_eq!(
            PartitionSelector::parse("EFI system partition")
                .unwrap()
                .resolve(&parts)
                .unwrap()
                .number,
            1,
            "a bare name, as hints were before"
        );
        let e = PartitionSelector::parse("name:Basic data partition")
            .unwrap()
            .resolve(&parts)
            .unwrap_err();
        assert!(matches!(e, SelectError::Ambiguous { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("number:3") && text.contains("number:4"),
            "{text}"
        );
        assert!(text.contains("label:\"Recovery\""), "{text}");
        let e = PartitionSelector::parse("label:Data")
            .unwrap()
            .resolve(&parts)
            .unwrap_err();
        assert!(matches!(e, SelectError::NoMatch { .. }), "{e}");
        for bad in ["number:0", "number:x", "type:nope", "label:"] {
            assert!(PartitionSelector::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            PartitionSelector::parse("odd:name").unwrap(),
            PartitionSelector::Name("odd:name".into())
        );
    }
}
