//! The Dockerfile front end: text → nodes ([`parser`]).

pub mod parser;
