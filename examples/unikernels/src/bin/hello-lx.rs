//! `hello`, entered the 64-bit Linux way (no PVH note).
#![no_std]
#![no_main]

#[path = "../hello_app.rs"]
mod app;

ukrt::entry_linux64!(app::main);
