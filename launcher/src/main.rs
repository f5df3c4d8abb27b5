//! `cernvm-launch`: creates, lists, starts, stops, pauses and destroys CernVMs on QEMU/KVM or
//! libvirt, and logs into them (spec §17).

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::ExitCode::from(cernvm_launch::app::main_with_args(&args))
}
