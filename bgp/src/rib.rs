//! RIBs and best-path selection (written by the RIB owner).
