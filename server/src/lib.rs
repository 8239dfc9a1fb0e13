//! Stellar server library (in progress).
