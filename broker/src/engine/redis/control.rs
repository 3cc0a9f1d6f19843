//! Questions between nodes on the `stellwerk:control` topic, which every
//! node subscribes to: `{"op":"ask","id":…,"node":…,"question":…}`, and
//! each other node's `{"op":"answer","id":…,"answer":…}`. `PUBLISH` says how
//! many nodes received the question, so the asker knows how many answers to
//! wait for (at most [`ANSWER_TIMEOUT`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::unavailable;
use crate::engine::{EngineError, Question, Sink, CONTROL};

/// How long an asking node waits for the others.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// This node's questions waiting for answers.
pub(super) struct Asks {
    node: Arc<str>,
    next: AtomicU64,
    waiting: Mutex<HashMap<String, mpsc::UnboundedSender<Value>>>,
}

impl Asks {
    pub(super) fn new(node: Arc<str>) -> Self {
        Self {
            node,
            next: AtomicU64::new(1),
            waiting: Mutex::default(),
        }
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<Value>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes `question` and collects the other nodes' answers.
    pub(super) async fn ask(
        &self,
        commands: &ConnectionManager,
        question: &Question,
    ) -> Result<Vec<Value>, EngineError> {
        let id = format!(
            "{}:{}",
            self.node,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let (tx, mut answers) = mpsc::unbounded_channel();
        self.waiting().insert(id.clone(), tx);
        let request = json!({"op": "ask", "id": id, "node": &*self.node, "question": question});
        let received: Result<u64, _> = ::redis::cmd("PUBLISH")
            .arg(CONTROL)
            .arg(request.to_string())
            .query_async(&mut commands.clone())
            .await;
        let expected = match received {
            // This node receives its own question too, and ignores it.
            Ok(received) => received.saturating_sub(1),
            Err(error) => {
                self.waiting().remove(&id);
                return Err(unavailable(&error));
            }
        };
        let mut collected = Vec::new();
        let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        while (collected.len() as u64) < expected {
            match tokio::time::timeout_at(deadline, answers.recv()).await {
                Ok(Some(answer)) => collected.push(answer),
                _ => {
                    tracing::warn!(
                        answered = collected.len(),
                        expected,
                        "redis: not every node answered within {ANSWER_TIMEOUT:?}"
                    );
                    break;
                }
            }
        }
        self.waiting().remove(&id);
        Ok(collected)
    }

    /// A message on the control topic: answers another node's question (on
    /// a task of its own), or hands an answer to the question waiting for it.
    pub(super) fn incoming(&self, payload: &[u8], sink: &dyn Sink, commands: &ConnectionManager) {
        let Ok(message) = serde_json::from_slice::<Value>(payload) else {
            tracing::warn!("redis: unreadable control message skipped");
            return;
        };
        let Some(id) = message["id"].as_str() else {
            return;
        };
        match message["op"].as_str() {
            Some("ask") if message["node"].as_str() != Some(&*self.node) => {
                let Ok(question) = serde_json::from_value::<Question>(message["question"].clone())
                else {
                    tracing::warn!("redis: unknown question from node {}", message["node"]);
                    return;
                };
                let answer = json!({"op": "answer", "id": id, "answer": sink.answer(&question)});
                let mut commands = commands.clone();
                tokio::spawn(async move {
                    let sent: Result<(), _> = ::redis::cmd("PUBLISH")
                        .arg(CONTROL)
                        .arg(answer.to_string())
                        .exec_async(&mut commands)
                        .await;
                    if let Err(e) = sent {
                        tracing::warn!("redis: cannot answer another node: {e}");
                    }
                });
            }
            Some("answer") => {
                if let Some(waiting) = self.waiting().get(id) {
                    let _ = waiting.send(message["answer"].clone());
                }
            }
            _ => {}
        }
    }
}
