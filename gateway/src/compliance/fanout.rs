//! One export from several replicas (`inquiry-gateway subjects export`): each replica holds the
//! inquiries it ingested, so an export asks every replica's admin API
//! (`POST /v1/subject-requests`, `kind: export`) and joins their answers into one document.

use serde_json::{json, Value};

use crate::poll::{client, exchange};
use inquiry_connectors::poll::{PollMethod, PollRequest};

/// Why an export from the replicas failed.
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    /// A replica did not answer 200 with an export (nothing is written then).
    #[error("{admin}: {reason}")]
    Replica {
        /// The replica's admin URL.
        admin: String,
        /// Its status and error, or why it could not be reached.
        reason: String,
    },
    /// No replica was named.
    #[error("name at least one replica (--admin URL)")]
    NoReplica,
}

/// Asks each replica at `admins` (admin base URLs) for an export of `subject` (the body's
/// `subject` object) under `jurisdiction`, with `token` as the bearer token when given, and
/// joins the answers ([`join_exports`]). Any replica that fails fails the whole export.
pub async fn export_from_replicas(
    admins: &[String],
    token: Option<&str>,
    subject: &Value,
    jurisdiction: &str,
) -> Result<Value, FanoutError> {
    if admins.is_empty() {
        return Err(FanoutError::NoReplica);
    }
    let client = client();
    let body = json!({ "kind": "export", "jurisdiction": jurisdiction, "subject": subject }).to_string();
    let agent = format!("inquiry-gateway/{} (subjects export)", env!("CARGO_PKG_VERSION"));
    let mut answers = Vec::with_capacity(admins.len());
    for admin in admins {
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        if let Some(token) = token {
            headers.push(("authorization".to_owned(), format!("Bearer {token}")));
        }
        let request = PollRequest {
            method: PollMethod::Post,
            path_and_query: "/v1/subject-requests".to_owned(),
            headers,
            body: body.clone(),
        };
        let failed = |reason: String| FanoutError::Replica { admin: admin.clone(), reason };
        let (status, _, answer) =
            exchange(&client, admin, request, &agent).await.map_err(|e| failed(format!("bad URL: {e}")))?;
        let document: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
        match status {
            200 if document.get("inquiries").is_some() => answers.push((admin.clone(), document)),
            599 => return Err(failed("not reachable (or no answer within 30 s)".to_owned())),
            _ => {
                let error = document.get("error").map(Value::to_string).unwrap_or_default();
                return Err(failed(format!("HTTP {status} {error}")));
            }
        }
    }
    Ok(join_exports(answers))
}

/// One document from the replicas' exports (`(admin URL, export)`): each replica's request
/// record under `replicas`, the subjects without repeats, and the inquiries, consents and audit
/// events of all of them (each tagged with the replica it came from); the processing
/// information is the first replica's (every replica runs the same configuration).
pub fn join_exports(answers: Vec<(String, Value)>) -> Value {
    let mut replicas = Vec::new();
    let mut subjects: Vec<Value> = Vec::new();
    let (mut inquiries, mut consents, mut events) = (Vec::new(), Vec::new(), Vec::new());
    let mut processing = Value::Null;
    for (admin, mut document) in answers {
        replicas.push(json!({
            "admin": admin,
            "request": document["request"].take(),
            "audit_events_from": document["audit_events_from"].take(),
        }));
        if processing.is_null() {
            processing = document["processing"].take();
        }
        for subject in document["subjects"].as_array().cloned().unwrap_or_default() {
            if !subjects.contains(&subject) {
                subjects.push(subject);
            }
        }
        let tagged = |list: &mut Value| -> Vec<Value> {
            let mut items = list.as_array().cloned().unwrap_or_default();
            for item in &mut items {
                if let Some(map) = item.as_object_mut() {
                    map.insert("replica".to_owned(), Value::String(admin.clone()));
                }
            }
            items
        };
        inquiries.extend(tagged(&mut document["inquiries"]));
        consents.extend(tagged(&mut document["consents"]));
        events.extend(tagged(&mut document["audit_events"]));
    }
    json!({
        "replicas": replicas,
        "processing": processing,
        "subjects": subjects,
        "inquiries": inquiries,
        "consents": consents,
        "audit_events": events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_are_joined_with_their_replica_and_the_subjects_once() {
        let one = json!({
            "request": {"id": "r1"}, "processing": {"controller": "Shop"}, "subjects": ["bp_a"],
            "inquiries": [{"inquiry": {"id": "i1"}}], "consents": [], "audit_events": [{"index": 0}],
        });
        let two = json!({
            "request": {"id": "r2"}, "processing": {"controller": "Shop"}, "subjects": ["bp_a", "bp_b"],
            "inquiries": [{"inquiry": {"id": "i2"}}, {"inquiry": {"id": "i3"}}], "consents": [{"purpose": "marketing"}],
            "audit_events": [], "audit_events_from": 120,
        });
        let joined = join_exports(vec![("http://a:9090".into(), one), ("http://b:9090".into(), two)]);
        assert_eq!(joined["subjects"], json!(["bp_a", "bp_b"]));
        assert_eq!(
            joined["replicas"][1],
            json!({"admin": "http://b:9090", "request": {"id": "r2"}, "audit_events_from": 120}),
            "where each replica's search of its audit log began"
        );
        let replicas: Vec<_> = joined["inquiries"].as_array().unwrap().iter().map(|i| i["replica"].clone()).collect();
        assert_eq!(replicas, [json!("http://a:9090"), json!("http://b:9090"), json!("http://b:9090")]);
        assert_eq!(joined["consents"][0]["replica"], "http://b:9090");
        assert_eq!(joined["audit_events"].as_array().unwrap().len(), 1);
        assert_eq!(joined["processing"]["controller"], "Shop");
    }
}
