//! `hello`, entered through PVH.
#![no_std]
#![no_main]

#[path = "../hello_app.rs"]
mod app;

ukrt::entry_pvh!(app::main);
