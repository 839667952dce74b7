//! One peer session (written by the session owner).
