//! The Dockerfile front end: text → nodes ([`parser`]) → checked stages and instructions
//! ([`instructions`]).

pub mod instructions;
pub mod parser;
