use super::fds::gaps;

#[test]
fn every_fd_above_stderr_is_closed_but_the_named_ones() {
    assert_eq!(gaps(&[]), vec![(3, u32::MAX)]);
    assert_eq!(
        gaps(&[0, 1, 2, -1]),
        vec![(3, u32::MAX)],
        "stdio and nonsense are not fds to keep"
    );
    assert_eq!(gaps(&[7]), vec![(3, 6), (8, u32::MAX)]);
    assert_eq!(gaps(&[9, 3, 9, 4]), vec![(5, 8), (10, u32::MAX)]);
}

#[test]
fn a_relative_snapshot_directory_is_refused_before_anything_changes() {
    let jail = super::Jail {
        uid: 4000,
        gid: 4000,
        snapshot_dir: Some("snapshots/web".into()),
    };
    assert!(matches!(jail.enter(), Err(super::Error::RelativeSnapshotDir(_))));
}
