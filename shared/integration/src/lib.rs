//! No library: this crate holds the tests, benchmarks and examples that span the layers.
