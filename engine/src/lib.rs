//! unikerneld: the host daemon. Grows in the engine issue.
