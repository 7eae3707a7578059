//! The distribution spec's errors: a code, an HTTP status, a message, a detail.

use serde_json::{json, Value};

/// An error answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RegError {
    /// HTTP status.
    pub status: u16,
    /// The spec's code (`BLOB_UNKNOWN`, …).
    pub code: &'static str,
    /// What went wrong.
    pub message: String,
    /// Structured detail.
    pub detail: Option<Value>,
    /// For 416: the upload's current length (the `Range` header to send).
    pub range_end: Option<u64>,
}

impl RegError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> RegError {
        RegError {
            status,
            code,
            message: message.into(),
            detail: None,
            range_end: None,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        let mut e = json!({"code": self.code, "message": self.message});
        if let Some(d) = &self.detail {
            e["detail"] = d.clone();
        }
        json!({ "errors": [e] })
    }

    pub fn blob_unknown(d: &image::digest::Digest) -> RegError {
        let mut e = RegError::new(404, "BLOB_UNKNOWN", "blob unknown to registry");
        e.detail = Some(json!({"digest": d.to_string()}));
        e
    }

    pub fn upload_unknown() -> RegError {
        RegError::new(
            404,
            "BLOB_UPLOAD_UNKNOWN",
            "blob upload unknown to registry",
        )
    }

    pub fn upload_invalid(m: String) -> RegError {
        RegError::new(400, "BLOB_UPLOAD_INVALID", m)
    }

    /// A chunk that does not start where the upload ends (416).
    pub fn range_invalid(len: u64) -> RegError {
        let mut e = RegError::new(
            416,
            "BLOB_UPLOAD_INVALID",
            format!("the chunk must start at byte {len}"),
        );
        e.range_end = Some(len);
        e
    }

    pub fn digest_invalid(m: String) -> RegError {
        RegError::new(400, "DIGEST_INVALID", m)
    }

    pub fn manifest_invalid(m: String) -> RegError {
        RegError::new(400, "MANIFEST_INVALID", m)
    }

    pub fn manifest_blob_unknown(missing: Vec<String>) -> RegError {
        let mut e = RegError::new(
            400,
            "MANIFEST_BLOB_UNKNOWN",
            format!(
                "manifest references what is not in the repository: {}",
                missing.join(", ")
            ),
        );
        e.detail = Some(json!({"digests": missing}));
        e
    }

    pub fn manifest_unknown(reference: &str) -> RegError {
        let mut e = RegError::new(404, "MANIFEST_UNKNOWN", "manifest unknown");
        e.detail = Some(json!({"reference": reference}));
        e
    }

    pub fn name_invalid(m: String) -> RegError {
        RegError::new(400, "NAME_INVALID", m)
    }

    pub fn name_unknown(name: &str) -> RegError {
        let mut e = RegError::new(404, "NAME_UNKNOWN", "repository name not known to registry");
        e.detail = Some(json!({"name": name}));
        e
    }

    pub fn tag_invalid(m: String) -> RegError {
        // The spec has no TAG_INVALID code; distribution answers MANIFEST_INVALID.
        RegError::new(400, "MANIFEST_INVALID", m)
    }

    pub fn size_invalid(m: String) -> RegError {
        RegError::new(413, "SIZE_INVALID", m)
    }

    pub fn unsupported(m: String) -> RegError {
        RegError::new(415, "UNSUPPORTED", m)
    }

    pub fn unauthorized(m: impl Into<String>) -> RegError {
        RegError::new(401, "UNAUTHORIZED", m)
    }

    pub fn denied(m: impl Into<String>) -> RegError {
        RegError::new(403, "DENIED", m)
    }

    pub fn not_found() -> RegError {
        RegError::new(404, "NOT_FOUND", "no such endpoint")
    }

    pub fn bad_request(m: String) -> RegError {
        RegError::new(400, "BAD_REQUEST", m)
    }

    pub fn method() -> RegError {
        RegError::new(405, "UNSUPPORTED", "method not allowed here")
    }

    pub fn internal(m: String) -> RegError {
        RegError::new(500, "UNKNOWN", m)
    }
}
