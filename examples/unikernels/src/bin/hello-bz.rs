//! `hello`, laid out as the protected-mode part of a bzImage (64-bit entry at +0x200).
#![no_std]
#![no_main]

#[path = "../hello_app.rs"]
mod app;

ukrt::entry_bzimage64!(app::main);
