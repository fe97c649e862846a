//! Receiving one message, as named stages: a frame becomes messages ([`Gateway::receive_frame`]:
//! one message, or the messages of a BHS/FHS envelope), and each message passes
//!
//! 1. [`parse`]: bytes to a [`Message`] (a second MSH inside it refuses the frame whole);
//! 2. [`admit`]: type, version, processing id and control id the gateway takes;
//! 3. [`Gateway::dedup`]: the same sender, control id and content again gets its first ACK;
//!    the same control id with other content goes to the dead-letter queue;
//! 4. [`mapping::map`]: site-side FHIR in patient groups (each PID with what follows it);
//! 5. [`Gateway::identify`]: each group's subject by the identity rule of the key list;
//! 6. [`pseudonymise`]: what may leave the hospital, or why not;
//! 7. [`Gateway::commit`]: one durable commit of the message row and its effects;
//! 8. the ACK, sent only after that commit.
//!
//! [`Gateway::replay`] runs stages 1 and 4-7 again for a dead letter.

use sha2::{Digest, Sha256};
use trialbridge_hl7v2::ack::{self, AckCode, AckError, Acknowledged};
use trialbridge_hl7v2::{Message, ParseError};

use crate::db::{DbError, Effects, Fact, KeyChange, NewMessage, Recorded, State, SubjectFacts};
use crate::identity::Enrolment;
use crate::identity::{self, Identity};
use crate::mapping::{self, Event, Mapped, PatientGroup};
use crate::pseudonym::{self, Origin, Outgoing};
use crate::{ack_id, now_hl7, now_instant, Gateway};

/// What receiving a message produced: the acknowledgement to send, if any.
#[derive(Debug, Clone)]
pub struct Received {
    /// The ACK text (`None` when enhanced mode asks for none).
    pub ack: Option<String>,
    /// MSA-1.
    pub code: AckCode,
}

fn reply(of: &Acknowledged, code: AckCode, errors: &[AckError]) -> Received {
    let text = ack::build(of, code, errors, &ack_id(), &now_hl7());
    Received {
        ack: of.wants(code).then_some(text),
        code,
    }
}

/// An ACK sent before: its code read back from MSA-1.
fn again(of: &Acknowledged, previous: String) -> Received {
    let code = match previous.split("MSA").nth(1).and_then(|r| r.get(1..3)) {
        Some("AA" | "CA") => AckCode::AA,
        Some("AR" | "CR") => AckCode::AR,
        _ => AckCode::AE,
    };
    Received {
        ack: of.wants(code).then_some(previous),
        code,
    }
}

/// Stage 1: the bytes as one message. A second header segment inside refuses the frame whole
/// (AR): reading two messages as one would attach the second one's results to the first one's
/// patient.
pub fn parse(bytes: &[u8]) -> Result<Message, Received> {
    let e = match tracing::info_span!("hl7.parse").in_scope(|| Message::parse(bytes)) {
        Ok(m) => return Ok(m),
        Err(e) => e,
    };
    let of = Acknowledged::unparsed(bytes);
    tracing::warn!(error = %e, "refused a message that does not parse");
    let (code, error) = match &e {
        ParseError::NoMsh { .. } | ParseError::Empty => {
            (AckCode::AR, AckError::message("100", e.to_string()))
        }
        ParseError::NestedHeader { segment, index, .. } => (
            AckCode::AR,
            AckError::segment(segment, *index, "100", e.to_string()),
        ),
        _ => (AckCode::AE, AckError::message("100", e.to_string())),
    };
    Err(reply(&of, code, &[error]))
}

/// A message the gateway takes, with what identifies it.
#[derive(Debug, Clone)]
pub struct Admitted {
    /// For the ACK.
    pub of: Acknowledged,
    /// MSH-3^MSH-4.
    pub sender: String,
    /// MSH-10.
    pub control_id: String,
    /// MSH-9's message type and trigger event (`ORU^R01`).
    pub kind: String,
    /// SHA-256 of the message's segments (CR-separated): the same content sent again has the
    /// same fingerprint whatever its line ends or framing.
    pub fingerprint: String,
}

/// The content fingerprint of a message.
pub fn fingerprint(m: &Message) -> String {
    let mut h = Sha256::new();
    for s in m.segments() {
        for (i, f) in (0..=s.len()).map(|n| s.field(n)).enumerate() {
            if i > 0 {
                h.update(b"|");
            }
            h.update(f.raw().as_bytes());
        }
        h.update(b"\r");
    }
    hex::encode(h.finalize())
}

/// Stage 2: the message types, versions and processing ids the gateway takes, and a control
/// id to deduplicate on.
pub fn admit(msg: &Message) -> Result<Admitted, Received> {
    let of = Acknowledged::of(msg);
    let (ty, trigger, _) = msg.message_type();
    if !mapping::supported(&ty, &trigger) {
        let code = if ty == "ADT" || ty == "ORU" {
            "201"
        } else {
            "200"
        };
        return Err(reply(
            &of,
            AckCode::AR,
            &[AckError::at(
                "MSH",
                1,
                9,
                code,
                format!("{ty}^{trigger} is not taken here (ADT A01/A03/A04/A08/A40, ORU R01 are)"),
            )],
        ));
    }
    let version = msg.version();
    let version_ok = version
        .strip_prefix("2.")
        .and_then(|r| r.chars().next())
        .is_some_and(|c| ('1'..='8').contains(&c));
    if !version_ok {
        return Err(reply(
            &of,
            AckCode::AR,
            &[AckError::at(
                "MSH",
                1,
                12,
                "203",
                format!("version '{version}' is not supported (2.1 to 2.8 are)"),
            )],
        ));
    }
    let processing = msg.msh(11).component(1);
    if !matches!(processing.as_ref(), "P" | "T") {
        return Err(reply(
            &of,
            AckCode::AR,
            &[AckError::at(
                "MSH",
                1,
                11,
                "202",
                format!("processing id '{processing}' is not taken (P or T)"),
            )],
        ));
    }
    let control_id = msg.control_id();
    if control_id.is_empty() {
        return Err(reply(
            &of,
            AckCode::AE,
            &[AckError::at(
                "MSH",
                1,
                10,
                "101",
                "MSH-10 (message control id) is required",
            )],
        ));
    }
    Ok(Admitted {
        sender: format!("{}^{}", msg.msh(3).value(), msg.msh(4).value()),
        kind: format!("{}^{}", msg.msh(9).component(1), msg.msh(9).component(2)),
        control_id,
        fingerprint: fingerprint(msg),
        of,
    })
}

/// The ACK of a message whose control id the sender used before for other content.
fn reused_ack(a: &Admitted) -> String {
    ack::build(
        &a.of,
        AckCode::AE,
        &[AckError::at(
            "MSH",
            1,
            10,
            "205",
            format!(
                "control id '{}' was used before by this sender for a message with other content; this message waits in the dead-letter queue for a person to decide (send new messages with new control ids)",
                a.control_id
            ),
        )],
        &ack_id(),
        &now_hl7(),
    )
}

/// Who each patient group of a message is.
#[derive(Debug, Clone)]
pub enum Identified {
    /// Results, visits: each group with its identity.
    Groups(Vec<Identity>),
    /// A merge: the key-list changes of every pair (none when nobody is enrolled).
    Merge(Vec<identity::MergeTarget>),
    /// Some group cannot be identified without a person.
    Problem(String),
}

/// What a message becomes.
#[derive(Debug)]
pub enum Disposition {
    /// A transaction Bundle for the trial store, with what it says of the subject.
    Forward {
        /// The Bundle.
        bundle: String,
        /// Facts of the subject's Patient to merge (ADT).
        facts: Option<(Enrolment, SubjectFacts)>,
        /// Results outside the trial's dataset, kept at the site.
        dropped: usize,
        /// Patient groups of patients who are not enrolled.
        not_enrolled: usize,
    },
    /// Nothing leaves; the reason (no raw message is kept).
    Nothing {
        /// Why.
        reason: &'static str,
        /// The counter it adds to.
        counter: &'static str,
        /// Results outside the dataset.
        dropped: usize,
    },
    /// A merge applied to the key list.
    Merge(Vec<KeyChange>),
    /// The dead-letter queue, with the reason and the counter.
    Dead(String, &'static str),
}

/// Stage 6: what may leave the hospital for the identified groups of a mapped message.
pub fn pseudonymise(
    gateway: &Gateway,
    mapped: &Mapped,
    identified: Identified,
    origin: &Origin,
) -> Disposition {
    let groups = match identified {
        Identified::Problem(why) => return Disposition::Dead(why, "identity_problems"),
        Identified::Merge(pairs) if pairs.is_empty() => {
            return Disposition::Nothing {
                reason: "not enrolled",
                counter: "not_enrolled",
                dropped: 0,
            }
        }
        Identified::Merge(pairs) => {
            let who = format!("hl7 {}|{}", origin.sender, origin.control_id);
            return Disposition::Merge(
                pairs
                    .into_iter()
                    .flat_map(|(subject, keys)| {
                        let who = who.clone();
                        keys.into_iter().map(move |(authority, mrn)| KeyChange {
                            authority,
                            mrn,
                            subject: subject.clone(),
                            who: who.clone(),
                        })
                    })
                    .collect(),
            );
        }
        Identified::Groups(g) => g,
    };
    let enrolled: Vec<(&PatientGroup, &Enrolment)> = mapped
        .groups
        .iter()
        .zip(&groups)
        .filter_map(|(g, i)| match i {
            Identity::Subject(who) => Some((g, who)),
            _ => None,
        })
        .collect();
    let not_enrolled = groups.len() - enrolled.len();
    if enrolled.is_empty() {
        return Disposition::Nothing {
            reason: "not enrolled",
            counter: "not_enrolled",
            dropped: 0,
        };
    }
    // What the message says of the subject's pseudonymous Patient (gender, birth year).
    let facts = (mapped.event == Event::Visit)
        .then(|| {
            enrolled.iter().find_map(|(g, who)| {
                let p = &g.patient;
                let f = SubjectFacts {
                    gender: p.gender.map_or(Fact::Keep, |g| Fact::Set(g.to_string())),
                    birth_year: p
                        .birth_date
                        .as_ref()
                        .map_or(Fact::Keep, |b| Fact::Set(b[..4].to_string())),
                };
                (f.gender.given() || f.birth_year.given()).then(|| ((*who).clone(), f))
            })
        })
        .flatten();
    let codes = gateway.code_map.current();
    let (out, dropped) = pseudonym::outgoing(
        &mapped.event,
        &enrolled,
        origin,
        &codes,
        &gateway.validation,
    );
    match out {
        Outgoing::Bundle(b) => Disposition::Forward {
            bundle: b.to_string(),
            facts,
            dropped,
            not_enrolled,
        },
        Outgoing::Nothing => Disposition::Nothing {
            reason: "nothing of the trial's dataset",
            counter: "nothing_of_the_dataset",
            dropped,
        },
        Outgoing::Dead(why) => Disposition::Dead(why, "dead_letters"),
    }
}

impl Gateway {
    /// Receives what one frame (or one HTTP body) carries: a message, or a batch/file
    /// (FHS/BHS ... BTS/FTS) whose messages are each received in order and acknowledged
    /// together in a batch of ACKs. A malformed envelope is refused as a whole (AR).
    pub async fn receive_frame(&self, bytes: &[u8]) -> Option<String> {
        let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        let start = body
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(0);
        if !(body[start..].starts_with(b"BHS") || body[start..].starts_with(b"FHS")) {
            return self.receive(bytes).await.ack;
        }
        let batches = match trialbridge_hl7v2::parse_batches(bytes) {
            Ok(m) => m,
            Err(e) => {
                let of = Acknowledged::unparsed(bytes);
                return Some(ack::build(
                    &of,
                    AckCode::AR,
                    &[AckError::message("100", e.to_string())],
                    &ack_id(),
                    &now_hl7(),
                ));
            }
        };
        // The answer has the shape of the question: a batch of ACKs per batch, in a file
        // envelope when a file came.
        let file = body[start..].starts_with(b"FHS");
        let mut out = String::new();
        if file {
            out.push_str(&format!("FHS|^~\\&|||||{}\r", now_hl7()));
        }
        for messages in &batches {
            out.push_str(&format!("BHS|^~\\&|||||{}\r", now_hl7()));
            let mut n = 0;
            for m in messages {
                if let Some(a) = self.receive(m.text().as_bytes()).await.ack {
                    out.push_str(&a);
                    n += 1;
                }
            }
            out.push_str(&format!("BTS|{n}\r"));
        }
        if file {
            out.push_str(&format!("FTS|{}\r", batches.len()));
        }
        Some(out)
    }

    /// Receives one message through the stages; AA only after its row is committed. Traced
    /// as `hl7.message`, the root of the trace that the outbox carries on to the store.
    pub async fn receive(&self, bytes: &[u8]) -> Received {
        use tracing::Instrument;
        let span = tracing::info_span!(
            "hl7.message",
            otel.kind = "consumer",
            messaging.system = "hl7v2",
            hl7.site = %self.config.site,
            hl7.ack = tracing::field::Empty,
        );
        let received = self.stages(bytes).instrument(span.clone()).await;
        span.record("hl7.ack", received.code.as_str());
        received
    }

    async fn stages(&self, bytes: &[u8]) -> Received {
        let msg = match parse(bytes) {
            Ok(m) => m,
            Err(refused) => return refused,
        };
        let admitted = match admit(&msg) {
            Ok(a) => a,
            Err(refused) => return refused,
        };
        match self.dedup(&admitted, bytes).await {
            Ok(None) => {}
            Ok(Some(answer)) => return answer,
            Err(e) => return self.unavailable(&admitted.of, e),
        }
        let (ty, trigger, _) = msg.message_type();
        let mapped =
            match tracing::info_span!("hl7.map", hl7.message_type = %format!("{ty}^{trigger}"))
                .in_scope(|| mapping::map(&msg, &self.config.site, &self.config.timezone))
            {
                Ok(m) => m,
                Err(errors) => return reply(&admitted.of, AckCode::AE, &errors),
            };
        let identified = match self.identify(&mapped) {
            Ok(i) => i,
            Err(e) => return self.unavailable(&admitted.of, e),
        };
        let origin = Origin {
            sender: admitted.sender.clone(),
            control_id: admitted.control_id.clone(),
            fingerprint: admitted.fingerprint.clone(),
            received: now_instant(),
            site: self.config.site.clone(),
        };
        let disposition = pseudonymise(self, &mapped, identified, &origin);
        self.commit(&admitted, &origin, bytes, disposition).await
    }

    /// Stage 3: `None` for a message not seen before; the answer for one that was (its first
    /// ACK), or for a control id reused with other content (AE; the message is kept as a dead
    /// letter).
    async fn dedup(&self, a: &Admitted, bytes: &[u8]) -> Result<Option<Received>, DbError> {
        let previous = self.db.previous(&a.sender, &a.control_id)?;
        if let Some(p) = previous.iter().find(|p| p.fingerprint == a.fingerprint) {
            self.db.bump("duplicates", 1).await?;
            return Ok(Some(again(&a.of, p.ack.clone())));
        }
        if previous.is_empty() {
            return Ok(None);
        }
        let ack = reused_ack(a);
        let recorded = self
            .db
            .record(
                NewMessage {
                    sender: &a.sender,
                    control_id: &a.control_id,
                    kind: &a.kind,
                    fingerprint: &a.fingerprint,
                    received: &now_instant(),
                    raw: Some(bytes),
                    state: State::Dead,
                    reason: None,
                    bundle: None,
                    ack: &ack,
                    reused_ack: Some(&ack),
                },
                Effects::default(),
            )
            .await?;
        tracing::warn!(sender = %a.sender, control_id = %a.control_id, "a control id was reused for other content: dead letter");
        Ok(Some(match recorded {
            Recorded::Duplicate(previous) => again(&a.of, previous),
            Recorded::Stored(_) | Recorded::Reused(_) => again(&a.of, ack),
        }))
    }

    /// Stage 5: the subject of every patient group, by the identity rule.
    pub fn identify(&self, mapped: &Mapped) -> Result<Identified, DbError> {
        let mut mrns: Vec<String> = mapped
            .groups
            .iter()
            .flat_map(|g| g.patient.identifiers.iter().chain(&g.prior))
            .map(|i| i.value.clone())
            .collect();
        mrns.sort();
        mrns.dedup();
        let rows = self.db.key_rows(&mrns)?;
        if mapped.event == Event::Merge {
            let mut pairs = Vec::new();
            for (n, g) in mapped.groups.iter().enumerate() {
                match identity::merge(&g.patient.identifiers, &g.prior, &rows) {
                    Ok(Some(pair)) => pairs.push(pair),
                    Ok(None) => {}
                    Err(why) => {
                        return Ok(Identified::Problem(format!(
                            "PID/MRG pair {}: {why}",
                            n + 1
                        )))
                    }
                }
            }
            return Ok(Identified::Merge(pairs));
        }
        let mut out = Vec::new();
        for (n, g) in mapped.groups.iter().enumerate() {
            match identity::identify(&g.patient.identifiers, &rows) {
                Identity::Problem(why) => {
                    return Ok(Identified::Problem(format!("PID {}: {why}", n + 1)))
                }
                i => out.push(i),
            }
        }
        Ok(Identified::Groups(out))
    }

    /// Stage 7 and 8: one commit of the message row and its effects, then the ACK.
    async fn commit(
        &self,
        a: &Admitted,
        origin: &Origin,
        bytes: &[u8],
        disposition: Disposition,
    ) -> Received {
        let ok = reply(&a.of, AckCode::AA, &[]);
        let ack_text = ok
            .ack
            .clone()
            .unwrap_or_else(|| ack::build(&a.of, AckCode::AA, &[], &ack_id(), &now_hl7()));
        let reused = reused_ack(a);
        let base = NewMessage {
            sender: &a.sender,
            control_id: &a.control_id,
            kind: &a.kind,
            fingerprint: &a.fingerprint,
            received: &origin.received,
            raw: None,
            state: State::Done,
            reason: None,
            bundle: None,
            ack: &ack_text,
            reused_ack: Some(&reused),
        };
        let recorded = match &disposition {
            Disposition::Forward {
                bundle,
                facts,
                dropped,
                not_enrolled,
            } => {
                let mut counters = vec![("queued", 1)];
                if *dropped > 0 {
                    counters.push(("observations_outside_the_dataset", *dropped as i64));
                }
                if *not_enrolled > 0 {
                    counters.push(("not_enrolled", *not_enrolled as i64));
                }
                self.db
                    .record(
                        NewMessage {
                            raw: Some(bytes),
                            state: State::Outbox,
                            bundle: Some(bundle),
                            ..base
                        },
                        Effects {
                            counters,
                            facts: facts.clone(),
                            ..Effects::default()
                        },
                    )
                    .await
            }
            Disposition::Nothing {
                reason,
                counter,
                dropped,
            } => {
                let mut counters = vec![(*counter, 1)];
                if *dropped > 0 {
                    counters.push(("observations_outside_the_dataset", *dropped as i64));
                }
                self.db
                    .record(
                        NewMessage {
                            reason: Some(reason),
                            ..base
                        },
                        Effects {
                            counters,
                            ..Effects::default()
                        },
                    )
                    .await
            }
            Disposition::Merge(changes) => {
                self.db
                    .record(
                        NewMessage {
                            raw: Some(bytes),
                            reason: Some("merge applied to the key list"),
                            ..base
                        },
                        Effects {
                            counters: vec![("merges", 1)],
                            key_changes: changes.clone(),
                            ..Effects::default()
                        },
                    )
                    .await
            }
            Disposition::Dead(why, counter) => {
                tracing::warn!(reason = %why, "message to the dead-letter queue");
                self.db
                    .record(
                        NewMessage {
                            raw: Some(bytes),
                            state: State::Dead,
                            reason: Some(why),
                            ..base
                        },
                        Effects {
                            counters: vec![(counter, 1)],
                            ..Effects::default()
                        },
                    )
                    .await
            }
        };
        match recorded {
            Ok(Recorded::Stored(_)) => {
                self.wake.notify_one();
                ok
            }
            // The same message raced in on another connection: its acknowledgement stands.
            Ok(Recorded::Duplicate(previous)) => again(&a.of, previous),
            Ok(Recorded::Reused(_)) => again(&a.of, reused),
            Err(e) => self.unavailable(&a.of, e),
        }
    }

    fn unavailable(&self, of: &Acknowledged, e: DbError) -> Received {
        tracing::error!(error = %e, "gateway database failed; answering AR so that the sender resends");
        reply(
            of,
            AckCode::AR,
            &[AckError::message(
                "207",
                "the gateway cannot store the message now; resend it unchanged",
            )],
        )
    }

    /// Re-processes a dead letter with the current key list and code maps, as `by` decided;
    /// `None` when there is no such dead letter.
    pub async fn replay(&self, id: i64, by: &str) -> Result<Option<String>, DbError> {
        let Some((d, raw)) = self.db.dead_letter(id).await? else {
            return Ok(None);
        };
        // A dead letter is often replayed because the study's code map was fixed in the trial
        // store a moment ago: read it now rather than at the next periodic refresh.
        self.code_map.refresh_logged(&self.config).await;
        let msg = match Message::parse(&raw) {
            Ok(m) => m,
            Err(e) => return Ok(Some(format!("the message does not parse: {e}"))),
        };
        let mapped = match mapping::map(&msg, &self.config.site, &self.config.timezone) {
            Ok(m) => m,
            Err(errors) => {
                return Ok(Some(
                    errors
                        .iter()
                        .map(|e| e.text.clone())
                        .collect::<Vec<_>>()
                        .join("; "),
                ))
            }
        };
        let identified = self.identify(&mapped)?;
        let origin = Origin {
            sender: d.sender,
            control_id: d.control_id,
            fingerprint: d.fingerprint,
            received: d.received,
            site: self.config.site.clone(),
        };
        let by = by.to_string();
        let (state, reason, bundle, effects, result) =
            match pseudonymise(self, &mapped, identified, &origin) {
                Disposition::Forward { bundle, facts, .. } => (
                    State::Outbox,
                    None,
                    Some(bundle),
                    Effects {
                        facts,
                        ..Effects::default()
                    },
                    "queued".to_string(),
                ),
                Disposition::Nothing { reason, .. } => (
                    State::Done,
                    Some(format!("{reason} (replay)")),
                    None,
                    Effects::default(),
                    format!("nothing to forward: {reason}"),
                ),
                Disposition::Merge(changes) => (
                    State::Done,
                    Some("merge applied to the key list (replay)".to_string()),
                    None,
                    Effects {
                        key_changes: changes,
                        ..Effects::default()
                    },
                    "merge applied".to_string(),
                ),
                Disposition::Dead(why, _) => (
                    State::Dead,
                    Some(why.clone()),
                    None,
                    Effects::default(),
                    format!("still dead: {why}"),
                ),
            };
        self.db
            .requeue(id, state, reason, bundle, effects, by)
            .await?;
        if state == State::Outbox {
            self.wake.notify_one();
        }
        Ok(Some(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_ignores_line_ends_and_sees_content() {
        let a = Message::parse(b"MSH|^~\\&|A|B|C|D|1||ORU^R01|1|P|2.5\rPID|1||1\r").unwrap();
        let b = Message::parse(b"MSH|^~\\&|A|B|C|D|1||ORU^R01|1|P|2.5\r\nPID|1||1\n").unwrap();
        let c = Message::parse(b"MSH|^~\\&|A|B|C|D|1||ORU^R01|1|P|2.5\rPID|1||2\r").unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&c));
    }

    #[test]
    fn two_messages_in_one_frame_are_refused_whole() {
        let two = b"MSH|^~\\&|LAB|KH|TB|SP|1||ORU^R01|A1|P|2.5\rPID|1||1^^^KH\rMSH|^~\\&|LAB|KH|TB|SP|1||ORU^R01|B1|P|2.5\rPID|1||2^^^KH\r";
        let refused = parse(two).unwrap_err();
        assert_eq!(refused.code, AckCode::AR);
        let ack = refused.ack.unwrap();
        assert!(ack.contains("MSA|AR|A1|"), "{ack}");
        assert!(ack.contains("ERR||MSH^3|100"), "{ack}");
    }

    #[test]
    fn a_previous_ack_keeps_its_code() {
        let m = Message::parse(b"MSH|^~\\&|A|B|C|D|1||ORU^R01|1|P|2.5\r").unwrap();
        let of = Acknowledged::of(&m);
        let ae = ack::build(&of, AckCode::AE, &[], "x", "1");
        assert_eq!(again(&of, ae).code, AckCode::AE);
        let aa = ack::build(&of, AckCode::AA, &[], "x", "1");
        assert_eq!(again(&of, aa).code, AckCode::AA);
    }
}
