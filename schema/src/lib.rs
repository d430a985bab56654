
pub mod ot;
