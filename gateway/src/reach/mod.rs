//! Reach-out: first-response SLA timers, reminders, escalation and agent alerts.

pub mod calendar;
pub mod sla;
