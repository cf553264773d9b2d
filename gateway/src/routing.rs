//! The routing stage's interface: a [`Router`] decides for a batch of inquiries at once.
//!
//! The built-in [`FallbackRouter`] sends everything to the configured fallback queue; WebAssembly
//! plugins implement the same trait. A router never stops the pipeline: a [`RouteOutcome::Failed`]
//! inquiry goes down the fallback route and is dead-lettered with the reason.

use std::sync::{Arc, PoisonError, RwLock};

use inquiry_connectors::Inquiry;
use serde::{Deserialize, Serialize};

use crate::config::FallbackConfig;

/// Priority label of a routed inquiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Answer when convenient.
    Low,
    /// The default.
    Normal,
    /// Answer before normal work.
    High,
    /// Answer now.
    Urgent,
}

/// What happens to a routed inquiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Disposition {
    /// Deliver it to the queue.
    Deliver,
    /// Keep it, but do not deliver it: it is spam.
    RejectSpam {
        /// Why the router judged it spam.
        reason: String,
    },
}

/// A routing decision, stored with the inquiry and published downstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// Deliver or reject as spam.
    pub disposition: Disposition,
    /// Queue (team) that handles the inquiry.
    pub queue: String,
    /// Agent assigned, if the router picked one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
    /// Priority label.
    pub priority: Priority,
    /// Tags for the helpdesk.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Language the reply should be written in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Reply template for the auto-acknowledgement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_template: Option<String>,
    /// First-response SLA policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sla_policy: Option<String>,
    /// Who decided: `fallback` or `plugin:<id>@<version>`.
    pub decided_by: String,
    /// Why the fallback was used, when a router failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_reason: Option<String>,
}

/// A router's answer for one inquiry of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteOutcome {
    /// The router decided.
    Decided(Decision),
    /// The router has no opinion: the fallback route applies, and nothing is dead-lettered.
    Undecided,
    /// The router failed on this inquiry: fallback route plus a dead letter with `reason`.
    Failed {
        /// Machine-readable reason (bounded set: metric label).
        reason: &'static str,
        /// Details for the dead letter; no personal data.
        detail: String,
    },
}

/// Decides where inquiries go. Called with batches; returns exactly one outcome per inquiry, in order.
pub trait Router: Send + Sync + 'static {
    /// Routes a batch.
    fn route(&self, batch: &[&Inquiry]) -> Vec<RouteOutcome>;
}

/// The built-in route: every inquiry goes to the configured fallback queue. Clones share one
/// configuration, which a routing reload replaces ([`FallbackRouter::replace`]).
#[derive(Debug, Clone)]
pub struct FallbackRouter {
    config: Arc<RwLock<FallbackConfig>>,
}

impl FallbackRouter {
    /// A fallback router for `config`.
    pub fn new(config: FallbackConfig) -> Self {
        FallbackRouter { config: Arc::new(RwLock::new(config)) }
    }

    /// Routes by `config` from now on (every clone).
    pub fn replace(&self, config: FallbackConfig) {
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = config;
    }

    /// The fallback decision for `inquiry`, noting `reason` when a router failed.
    pub fn decide(&self, inquiry: &Inquiry, reason: Option<&str>) -> Decision {
        let config = self.config.read().unwrap_or_else(PoisonError::into_inner);
        Decision {
            disposition: Disposition::Deliver,
            queue: config.queue.clone(),
            assignee: None,
            priority: config.priority,
            tags: Vec::new(),
            language: inquiry.buyer.language.clone(),
            reply_template: None,
            sla_policy: None,
            decided_by: "fallback".to_owned(),
            fallback_reason: reason.map(str::to_owned),
        }
    }
}

impl Router for FallbackRouter {
    fn route(&self, batch: &[&Inquiry]) -> Vec<RouteOutcome> {
        batch.iter().map(|inquiry| RouteOutcome::Decided(self.decide(inquiry, None))).collect()
    }
}
