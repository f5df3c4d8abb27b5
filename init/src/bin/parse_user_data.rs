//! `parse_user_data` as its own executable (the tests and hosts use it; the initramfs links the
//! name to `/init`, which acts the same when called so): see
//! [`ucernvm_init::context::parse_user_data_main`].

fn main() {
    std::process::exit(ucernvm_init::context::parse_user_data_main());
}
