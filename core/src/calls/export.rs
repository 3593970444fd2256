//! Calls to an `ExportDO` (one per export id). They travel as fetches: the
//! answers are the contract's export status and file, passed to the
//! client as the object made them, so no object reads one back and the
//! family has no answer of its own.

use serde::{Deserialize, Serialize};

use super::Call;

/// What an `ExportDO` is asked to do, always for the export's user
/// (checked against the export's row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum ExportCall {
    /// Create the export and start its steps.
    Start {
        /// The export id (the object cannot read its own name).
        export_id: String,
        /// Whose data.
        user_id: String,
    },
    /// The export's status.
    Status {
        /// The export id.
        export_id: String,
        /// The user in the path.
        user_id: String,
    },
    /// The file, once done.
    Download {
        /// The export id.
        export_id: String,
        /// The user in the path.
        user_id: String,
    },
}

impl Call for ExportCall {
    // The answers are HTTP responses for the client (see the module).
    type Answer = ();

    fn payload(&mut self) -> Option<&mut Vec<u8>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::strict;
    use super::super::tests::round_trip;
    use super::*;

    #[test]
    fn every_call_round_trips() {
        for call in [
            ExportCall::Start {
                export_id: "e".into(),
                user_id: "u@x".into(),
            },
            ExportCall::Status {
                export_id: "e".into(),
                user_id: "u".into(),
            },
            ExportCall::Download {
                export_id: "e".into(),
                user_id: "a b".into(),
            },
        ] {
            round_trip(call);
        }
    }

    #[test]
    fn malformed_calls_are_refused() {
        for bad in [
            r#"{"start":{"exportId":"e"}}"#,
            r#"{"start":{"exportId":"e","userId":"u","id":"x"}}"#,
            r#"{"stop":{"exportId":"e","userId":"u"}}"#,
            r#"{"status":{"exportId":"e","userId":"u"}} x"#,
        ] {
            assert!(strict::<ExportCall>(bad).is_err(), "{bad}");
        }
    }
}
