//! The Dockerfile front end: text → nodes ([`parser`]) → checked stages and instructions
//! ([`instructions`]); words expanded with ARG/ENV values ([`shell`]).

pub mod instructions;
pub mod parser;
#[cfg(test)]
mod peer;
pub mod shell;
