//! What is wrong with a request, FastAPI-style: one [`Invalid`] per problem, and the error
//! that carries them all out of the body reader. The host answers it as a 422.

/// One validation problem, FastAPI-style.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Where: `["body", "amount"]`.
    pub location: Vec<String>,
    pub message: String,
    /// Machine-readable, pydantic's names where one fits ("missing", "greater_than").
    pub kind: String,
}

impl Invalid {
    pub fn body_field(field: &str, kind: &str, message: impl Into<String>) -> Invalid {
        Invalid {
            location: vec!["body".into(), field.into()],
            message: message.into(),
            kind: kind.into(),
        }
    }

    /// A problem with one member of an object field: `["body", "metadata", "order_id"]`.
    pub fn body_member(field: &str, key: &str, kind: &str, message: impl Into<String>) -> Invalid {
        Invalid {
            location: vec!["body".into(), field.into(), key.into()],
            message: message.into(),
            kind: kind.into(),
        }
    }

    pub fn header(name: &str, kind: &str, message: impl Into<String>) -> Invalid {
        Invalid {
            location: vec!["header".into(), name.into()],
            message: message.into(),
            kind: kind.into(),
        }
    }

    pub fn query(name: &str, kind: &str, message: impl Into<String>) -> Invalid {
        Invalid {
            location: vec!["query".into(), name.into()],
            message: message.into(),
            kind: kind.into(),
        }
    }

    pub fn path(name: &str, kind: &str, message: impl Into<String>) -> Invalid {
        Invalid {
            location: vec!["path".into(), name.into()],
            message: message.into(),
            kind: kind.into(),
        }
    }

    /// A problem with the body as a whole (not JSON, not an object).
    pub fn body(kind: &str, message: impl Into<String>) -> Invalid {
        Invalid {
            location: vec!["body".into()],
            message: message.into(),
            kind: kind.into(),
        }
    }
}

/// A body that cannot be read as the fields asked for; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid request body ({} problem(s))", .problems.len())]
pub struct BodyError {
    pub problems: Vec<Invalid>,
}
