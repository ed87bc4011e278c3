//! The Dockerfile front end: text → nodes ([`parser`]) → checked stages and instructions
//! ([`instructions`]), their flags' values as types ([`flags`]); words expanded with ARG/ENV values ([`shell`]).

pub mod flags;
pub mod instructions;
pub mod parser;
#[cfg(test)]
mod peer;
pub mod shell;
