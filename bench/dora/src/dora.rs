//! The `dora` command line, from the `dora-cli` crate's library.
fn main() {
    dora_cli::lib_main_from_argv(std::env::args_os());
}
