//! The committee member's side of the actor: it drives the member machine
//! (`session::roles::member`) and keeps the secrets in the key actor. Seeds are persisted
//! before they are acknowledged; the pinned contributor set is persisted before its
//! attestation leaves, and keys are released only against t verified attestations.

use std::collections::BTreeSet;
use std::str::FromStr;

use super::*;
use crate::crypto::kahe::SessionContext;
use crate::crypto::kahe::{contributors_digest, ReleaseRequest, SeedBundle};
use crate::session::messages::Attestation;
use crate::session::roles::member::{pin_statement, MemberDecision, MemberInput, MemberState};

/// The committee indices whose attestations of `statement` verify under their own member's
/// peer id (an Ed25519 identity, whose peer id carries the public key). More attestations than
/// members is a malformed request, refused before any signature is checked: each check costs
/// tens of microseconds on the actor.
fn verified_attesters(
    committee: &[String],
    statement: &[u8],
    pins: &[Attestation],
) -> Result<BTreeSet<u32>, SessionError> {
    if pins.len() > committee.len() {
        return Err(SessionError::BadInput(format!(
            "{} attestations for a committee of {}",
            pins.len(),
            committee.len()
        )));
    }
    Ok(pins
        .iter()
        .filter(|pin| {
            let Some(peer) = committee.get(pin.member as usize) else {
                return false;
            };
            let Ok(peer) = PeerId::from_str(peer) else {
                return false;
            };
            let hash = peer.as_ref();
            // 0x00: the identity multihash, which holds the public key itself.
            hash.code() == 0x00
                && libp2p::identity::PublicKey::try_decode_protobuf(hash.digest())
                    .is_ok_and(|key| key.verify(statement, &pin.signature))
        })
        .map(|pin| pin.member)
        .collect())
}

impl AggregationActor {
    /// A participant's seeds for this member.
    pub(super) async fn receive_seeds(
        &mut self,
        from: &str,
        session: &str,
        plan_digest: [u8; 32],
        bundle: SeedBundle,
    ) -> Result<(), SessionError> {
        let mut joined = self
            .joined
            .get(session)
            .cloned()
            .ok_or_else(|| SessionError::UnknownSession(session.to_string()))?;
        let Some(member) = joined.member.as_mut() else {
            return Err(SessionError::NotAllowed {
                peer: self.me(),
                role: "a committee member",
                session: session.to_string(),
            });
        };
        if joined.plan.digest() != plan_digest {
            return Err(SessionError::BadInput(
                "seeds for another plan of this session".into(),
            ));
        }
        let context = joined.plan.context()?;
        bundle.check(context.committee(), member.index)?;
        let input = MemberInput::Seeds {
            from,
            digest: bundle.digest(),
        };
        match member.handle(input, self.policy.min_contributors_floor)? {
            MemberDecision::AlreadyHeld => Ok(()),
            _ => {
                self.keys.store_bundle(session, from, bundle).await?;
                self.persist_joined(&joined).await?;
                self.joined.insert(session.to_string(), joined);
                Ok(())
            }
        }
    }

    /// Which of `participants` this member holds seeds of (asked by the coordinator).
    pub(super) fn holdings(
        &self,
        from: &str,
        session: &str,
        participants: &[String],
    ) -> Result<Vec<String>, SessionError> {
        let joined = self
            .joined
            .get(session)
            .ok_or_else(|| SessionError::UnknownSession(session.to_string()))?;
        let mut member = joined
            .member
            .clone()
            .ok_or(SessionError::UnknownSession(session.to_string()))?;
        let input = MemberInput::Holdings { from, participants };
        match member.handle(input, self.policy.min_contributors_floor)? {
            MemberDecision::Held(held) => Ok(held),
            other => Err(SessionError::BadInput(format!("unexpected {other:?}"))),
        }
    }

    /// A session in which this node is a committee member: a copy of it, of the member's
    /// machine (to change and put back), and its context.
    fn member_session(
        &self,
        session: &str,
    ) -> Result<(Joined, MemberState, SessionContext), SessionError> {
        let unknown = || SessionError::UnknownSession(session.to_string());
        let joined = self.joined.get(session).cloned().ok_or_else(unknown)?;
        let member = joined.member.clone().ok_or_else(unknown)?;
        let context = joined.plan.context()?;
        Ok((joined, member, context))
    }

    /// Pins contributor set `contributors` (checked by the machine, persisted the first time)
    /// and answers with this node's signature over it.
    pub(super) async fn pin(
        &mut self,
        from: &str,
        session: &str,
        contributors: &[String],
    ) -> Result<Vec<u8>, SessionError> {
        let (mut joined, mut member, context) = self.member_session(session)?;
        let input = MemberInput::Pin {
            from,
            contributors,
            context: &context,
        };
        if let MemberDecision::Pin { first: true } =
            member.handle(input, self.policy.min_contributors_floor)?
        {
            joined.member = Some(member);
            self.persist_joined(&joined).await?;
            self.joined.insert(session.to_string(), joined);
        }
        let statement = pin_statement(&contributors_digest(&context, contributors));
        self.identity
            .sign(&statement)
            .map_err(|e| SessionError::BadInput(format!("cannot sign the attestation: {e}")))
    }

    /// The keys of one contributor set: checked by the machine against the set this member
    /// pinned and the attestations that verify, then computed by the key actor (off this
    /// actor).
    pub(super) async fn release(
        &mut self,
        from: &str,
        session: &str,
        request: ReleaseRequest,
        pins: &[Attestation],
    ) -> Result<BoxedAnswer, SessionError> {
        let (joined, mut member, context) = self.member_session(session)?;
        // Only the coordinator's requests are worth checking signatures for.
        joined.plan.check_coordinator(from)?;
        let index = member.index;
        let statement = pin_statement(&request.contributors_digest(&context));
        let attested = verified_attesters(&joined.plan.committee, &statement, pins)?;
        let input = MemberInput::Release {
            from,
            request: &request,
            context: &context,
            attested: &attested,
        };
        member.handle(input, self.policy.min_contributors_floor)?;
        let (keys, session) = (self.keys.clone(), session.to_string());
        Ok(Box::pin(async move {
            keys.release(&session, index, context, request)
                .await
                .map(AggReply::Release)
        }))
    }
}
