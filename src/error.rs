//! The one error type of convmart, and how each kind maps to an exit code
//! (SPEC §6). Every variant carries what the user needs to find the cause:
//! the argument, rule, file, column or URL.

use std::process::ExitCode;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command-line argument is wrong (exit 2).
    #[error("argument {arg}: {message}")]
    Argument { arg: String, message: String },

    /// The rule file is unreadable or a rule is invalid (exit 2).
    #[error("rules {file}: {message}")]
    Rules { file: String, message: String },

    /// A rule is invalid; names the rule (exit 2).
    #[error("rules {file}: rule '{rule}': {message}")]
    Rule {
        file: String,
        rule: String,
        message: String,
    },

    /// The report date has no input partition (exit 3).
    #[error("no input for {date}: {message}")]
    NoInput { date: String, message: String },

    /// An input file is corrupt or does not have the required shape (exit 65).
    #[error("data error in {file}: {message}")]
    Data { file: String, message: String },

    /// The data as a whole breaks a limit the user set (exit 65).
    #[error("data error: {0}")]
    DataLimit(String),

    /// Storage could not be reached or failed transiently (exit 75). Safe to retry.
    #[error("storage error at {location}: {message} (temporary; safe to retry)")]
    Storage { location: String, message: String },

    /// Another run of the same date holds its lock (exit 75): retry later.
    #[error("date {date} is locked: {message}")]
    Locked { date: String, message: String },

    /// Storage refused the credentials (exit 2): fix the AWS_* settings.
    #[error("access denied at {location}: {message}. Check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN and the bucket policy")]
    AccessDenied { location: String, message: String },

    /// A query failed for a reason that is not the user's input (exit 70).
    #[error("internal error in {stage}: {message}")]
    Internal { stage: String, message: String },
}

impl Error {
    pub fn argument(arg: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Argument {
            arg: arg.into(),
            message: message.into(),
        }
    }

    pub fn data(file: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Data {
            file: file.into(),
            message: message.into(),
        }
    }

    pub fn storage(location: impl Into<String>, err: impl std::fmt::Display) -> Self {
        Error::Storage {
            location: location.into(),
            message: one_line(&err.to_string()),
        }
    }

    pub fn internal(stage: impl Into<String>, err: impl std::fmt::Display) -> Self {
        Error::Internal {
            stage: stage.into(),
            message: one_line(&err.to_string()),
        }
    }

    /// Exit code of SPEC §6. Internal errors use 70 (EX_SOFTWARE).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Argument { .. } | Error::Rules { .. } | Error::Rule { .. } => 2,
            Error::NoInput { .. } => 3,
            Error::Data { .. } | Error::DataLimit(_) => 65,
            Error::Storage { .. } | Error::Locked { .. } => 75,
            Error::AccessDenied { .. } => 2,
            Error::Internal { .. } => 70,
        }
    }

    pub fn to_exit_code(&self) -> ExitCode {
        ExitCode::from(self.exit_code())
    }
}

/// Error messages are printed on one line so that schedulers' log views keep
/// them whole.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
