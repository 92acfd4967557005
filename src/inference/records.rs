//! Where the inference actor's records live in the store: one function per record family, so
//! that no code formats a key of its own. Context and model ids hold no `/`.
//!
//! - `contexts` tree: `ctx/{context}` (a client context), `own-evalkey/{context}` (the
//!   evaluation key of this node's own context, kept for uploading), `evalkey/{peer}/{context}`
//!   (a key a peer uploaded) and `evalkey-id/{peer}/{context}` (that key's id);
//! - upload trees of kind [`EVAL_PIECES`]: an evaluation key's pieces while they arrive;
//! - `models` tree: a model record under its name.

/// Every client context's key starts with this.
pub const CONTEXTS: &str = "ctx/";

/// A client context (`trees::CONTEXTS`).
pub fn context(id: &str) -> Vec<u8> {
    format!("{CONTEXTS}{id}").into_bytes()
}

/// The evaluation key of this node's own context `id` (`trees::CONTEXTS`).
pub fn own_eval_key(id: &str) -> Vec<u8> {
    format!("own-evalkey/{id}").into_bytes()
}

/// Where an uploaded evaluation key lives on a model node: per uploading peer, so one client
/// can never replace another's key.
pub fn eval_slot(peer: &str, context: &str) -> String {
    format!("{peer}/{context}")
}

/// An uploaded evaluation key (`trees::CONTEXTS`).
pub fn eval_key(slot: &str) -> Vec<u8> {
    format!("evalkey/{slot}").into_bytes()
}

/// The id of the evaluation key in `slot` (`trees::CONTEXTS`).
pub fn eval_key_id(slot: &str) -> Vec<u8> {
    format!("evalkey-id/{slot}").into_bytes()
}

/// Kind of the upload trees that hold evaluation-key pieces while they arrive.
pub const EVAL_PIECES: &str = "contexts/evalpiece";

/// A model (`trees::MODELS`).
pub fn model(name: &str) -> Vec<u8> {
    name.as_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_do_not_overlap_and_a_peers_key_is_its_own() {
        let slot = eval_slot("12D3KooWpeer", "c1");
        let keys = [
            context("c1"),
            own_eval_key("c1"),
            eval_key(&slot),
            eval_key_id(&slot),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert!(!a.starts_with(b) && !b.starts_with(a), "{a:?} {b:?}");
            }
        }
        assert_ne!(eval_slot("12D3KooWother", "c1"), slot);
        assert_eq!(model("m"), b"m");
    }
}
