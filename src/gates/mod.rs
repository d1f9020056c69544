//! Gates: evidence in, a verdict out. A gate that blocks is a result, not an
//! error; `Err` is reserved for things that went wrong while gathering evidence.

pub mod health;
pub mod http;
