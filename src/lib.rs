//! convmart: raw ad-event Parquet -> hard/soft conversion summary tables.
//!
//! The binary (`src/main.rs`) is a thin shell over these modules, one per stage.

pub mod cli;
#[cfg(feature = "ballista")]
pub mod cluster;
pub mod commands;
pub mod engine;
pub mod error;
pub mod functions;
pub mod generate;
pub mod input;
pub mod job;
pub mod lock;
pub mod output;
pub mod queries;
pub mod rules;
pub mod storage;
