//! Kubernetes' Status errors with its exact reasons, codes and messages.

use serde_json::{json, Value};

use crate::kinds::Kind;

/// An API error, answered as a `Status` object.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }
    fn with_details(mut self, d: Value) -> ApiError {
        self.details = Some(d);
        self
    }
    fn details(kind: &Kind, name: &str) -> Value {
        let mut d = json!({"name": name, "kind": kind.plural});
        if !kind.group.is_empty() {
            d["group"] = json!(kind.group);
        }
        d
    }
    pub fn not_found(kind: &Kind, name: &str) -> ApiError {
        ApiError::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", kind.qualified()),
        )
        .with_details(Self::details(kind, name))
    }
    /// NotFound for a resource named by group and plural (a namespace, say).
    pub fn not_found_gr(group: &str, plural: &str, name: &str) -> ApiError {
        let q = if group.is_empty() {
            plural.to_string()
        } else {
            format!("{plural}.{group}")
        };
        let mut d = json!({"name": name, "kind": plural});
        if !group.is_empty() {
            d["group"] = json!(group);
        }
        ApiError::new(404, "NotFound", format!("{q} \"{name}\" not found")).with_details(d)
    }
    pub fn already_exists(kind: &Kind, name: &str) -> ApiError {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", kind.qualified()),
        )
        .with_details(Self::details(kind, name))
    }
    pub fn conflict(kind: &Kind, name: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                kind.qualified()
            ),
        )
        .with_details(Self::details(kind, name))
    }
    pub fn conflict_msg(kind: &Kind, name: &str, msg: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {msg}",
                kind.qualified()
            ),
        )
        .with_details(Self::details(kind, name))
    }
    /// 422 Invalid with one cause per field: `(field, cause reason, message)`.
    pub fn invalid(kind: &Kind, name: &str, causes: Vec<FieldError>) -> ApiError {
        let list: Vec<String> = causes.iter().map(|c| c.to_string()).collect();
        let joined = if list.len() == 1 {
            list[0].clone()
        } else {
            format!("[{}]", list.join(", "))
        };
        let gk = if kind.group.is_empty() {
            kind.kind.clone()
        } else {
            format!("{}.{}", kind.kind, kind.group)
        };
        let mut d = json!({"name": name, "kind": kind.kind, "causes": causes.iter().map(|c| json!({
            "reason": c.reason, "message": c.message(), "field": c.field,
        })).collect::<Vec<_>>()});
        if !kind.group.is_empty() {
            d["group"] = json!(kind.group);
        }
        ApiError::new(
            422,
            "Invalid",
            format!("{gk} \"{name}\" is invalid: {joined}"),
        )
        .with_details(d)
    }
    pub fn bad_request(msg: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", msg)
    }
    pub fn method_not_allowed(msg: impl Into<String>) -> ApiError {
        ApiError::new(405, "MethodNotAllowed", msg)
    }
    pub fn expired(msg: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", msg)
    }
    pub fn internal(msg: impl Into<String>) -> ApiError {
        ApiError::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", msg.into()),
        )
    }
    pub fn forbidden(msg: impl Into<String>) -> ApiError {
        ApiError::new(403, "Forbidden", msg)
    }
    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }
    pub fn unavailable(msg: impl Into<String>) -> ApiError {
        ApiError::new(503, "ServiceUnavailable", msg)
    }
    pub fn too_large() -> ApiError {
        ApiError::new(
            413,
            "RequestEntityTooLarge",
            "Request entity too large: limit is 3145728",
        )
    }
    pub fn unsupported_media(allowed: &[&str]) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: {}", allowed.join(", ")),
        )
    }
    pub fn not_acceptable(allowed: &str) -> ApiError {
        ApiError::new(
            406,
            "NotAcceptable",
            format!("only the following media types are accepted: {allowed}"),
        )
    }
    pub fn to_status(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        if self.reason.is_empty() {
            v.as_object_mut().unwrap().remove("reason");
        }
        v
    }
}

/// One field's error, as Kubernetes' field.Error.
#[derive(Debug, Clone)]
pub struct FieldError {
    pub field: String,
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueNotSupported`, `FieldValueForbidden`, `FieldValueDuplicate`, `FieldValueTooLong`
    pub reason: &'static str,
    pub value: Option<String>,
    pub detail: String,
}

impl FieldError {
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            reason: "FieldValueRequired",
            value: None,
            detail: detail.into(),
        }
    }
    pub fn invalid(
        field: impl Into<String>,
        value: impl Into<String>,
        detail: impl Into<String>,
    ) -> FieldError {
        FieldError {
            field: field.into(),
            reason: "FieldValueInvalid",
            value: Some(value.into()),
            detail: detail.into(),
        }
    }
    pub fn invalid_raw(
        field: impl Into<String>,
        value_repr: String,
        detail: impl Into<String>,
    ) -> FieldError {
        FieldError {
            field: field.into(),
            reason: "FieldValueInvalid",
            value: Some(format!("\u{0}{value_repr}")),
            detail: detail.into(),
        }
    }
    pub fn not_supported(field: impl Into<String>, value: &str, allowed: &[&str]) -> FieldError {
        let q: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
        FieldError {
            field: field.into(),
            reason: "FieldValueNotSupported",
            value: Some(value.into()),
            detail: format!("supported values: {}", q.join(", ")),
        }
    }
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            reason: "FieldValueForbidden",
            value: None,
            detail: detail.into(),
        }
    }
    pub fn duplicate(field: impl Into<String>, value: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            reason: "FieldValueDuplicate",
            value: Some(value.into()),
            detail: String::new(),
        }
    }
    fn type_text(&self) -> &'static str {
        match self.reason {
            "FieldValueRequired" => "Required value",
            "FieldValueInvalid" => "Invalid value",
            "FieldValueNotSupported" => "Unsupported value",
            "FieldValueForbidden" => "Forbidden",
            "FieldValueDuplicate" => "Duplicate value",
            "FieldValueTooLong" => "Too long",
            _ => "Invalid value",
        }
    }
    /// The cause's message: the error without the field.
    pub fn message(&self) -> String {
        let mut s = self.type_text().to_string();
        if let Some(v) = &self.value {
            match v.strip_prefix('\u{0}') {
                Some(raw) => s.push_str(&format!(": {raw}")),
                None => s.push_str(&format!(": \"{v}\"")),
            }
        }
        if !self.detail.is_empty() {
            s.push_str(&format!(": {}", self.detail));
        }
        s
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message())
    }
}

impl From<store::StoreError> for ApiError {
    fn from(e: store::StoreError) -> ApiError {
        match e {
            store::StoreError::Compacted { requested, compacted } => ApiError::expired(format!(
                "The resourceVersion for the provided list is too old. requested {requested}, compacted {compacted}"
            )),
            store::StoreError::FutureRevision { requested, current } => ApiError::new(
                504,
                "Timeout",
                format!("Too large resource version: {requested}, current: {current}"),
            ),
            store::StoreError::Unavailable(msg) => {
                ApiError::new(503, "ServiceUnavailable", msg)
            }
            other => {
                let mut msg = other.to_string();
                let mut src = std::error::Error::source(&other);
                while let Some(s) = src {
                    msg.push_str(&format!(": {s}"));
                    src = s.source();
                }
                ApiError::internal(msg)
            }
        }
    }
}
