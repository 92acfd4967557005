//! The committee member's side of the actor: it drives the member machine
//! (`session::roles::member`) and keeps the secrets in the key actor. Seeds are persisted
//! before they are acknowledged; the contributor set is persisted before any byte of a release
//! leaves.

use super::*;
use crate::crypto::kahe::{ReleaseRequest, SeedBundle};
use crate::session::roles::member::{MemberDecision, MemberInput};

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

    /// The keys of one contributor set: checked by the machine, the set persisted on its first
    /// request, then computed by the key actor (off this actor).
    pub(super) async fn release(
        &mut self,
        from: &str,
        session: &str,
        request: ReleaseRequest,
    ) -> Result<BoxedAnswer, SessionError> {
        let mut joined = self
            .joined
            .get(session)
            .cloned()
            .ok_or_else(|| SessionError::UnknownSession(session.to_string()))?;
        let context = joined.plan.context()?;
        let Some(member) = joined.member.as_mut() else {
            return Err(SessionError::UnknownSession(session.to_string()));
        };
        let index = member.index;
        let input = MemberInput::Release {
            from,
            request: &request,
            context: &context,
        };
        if let MemberDecision::Release { first: true } =
            member.handle(input, self.policy.min_contributors_floor)?
        {
            self.persist_joined(&joined).await?;
            self.joined.insert(session.to_string(), joined);
        }
        let (keys, session) = (self.keys.clone(), session.to_string());
        Ok(Box::pin(async move {
            keys.release(&session, index, context, request)
                .await
                .map(AggReply::Release)
        }))
    }
}
