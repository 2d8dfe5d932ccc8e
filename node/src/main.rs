//! The `tollgate` binary: see [`tollgate_node::cli`].
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    tollgate_node::cli::main()
}
