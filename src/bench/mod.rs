//! Load generation and histories. (Being written: see issue 2.)
use crate::client::Client;
use crate::rt::Runtime;

#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {}

pub async fn run_load_cli<R: Runtime>(_rt: R, _client: Client<R>, _args: LoadArgs) -> i32 {
    eprintln!("load mode is not written yet");
    2
}
