//! `hello`, entered through multiboot (v1). The tests also boot it as an ELF32
//! (`objcopy -O elf32-i386`) and as a flat image with the a.out kludge (`objcopy -O binary`).
#![no_std]
#![no_main]

#[path = "../hello_app.rs"]
mod app;

ukrt::entry_multiboot!(app::main);
