//! Unix user names as both daemons report them: the name the user database gives a uid,
//! or `uid:N` when it has none (a container's user, a deleted account), so a uid is never
//! shown as an empty or misleading name.

/// The name of `uid` on this host (`uid:N` when the user database has none).
pub fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| format!("uid:{uid}"), |u| u.name)
}

#[cfg(test)]
mod tests {
    use super::user_name;

    #[test]
    fn names_come_from_the_user_database_and_fall_back_to_the_uid() {
        assert_eq!(user_name(0), "root");
        // No account has this uid (the overflow uid minus one is never allocated).
        assert_eq!(user_name(4_294_967_294), "uid:4294967294");
    }
}
