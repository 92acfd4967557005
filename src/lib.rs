pub mod bench;
pub mod crypto;
