//! Plans applied: limits changed in place, and a mass apply that starts a batch at once
//! and queues the rest.
use super::*;

#[tokio::test(start_paused = true)]
async fn changed_limits_apply_to_the_running_vm_in_place() {
    let mut h = Harness::new("limits").await;
    h.write("web.kdl", &decl("web", ""));
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(10)).await;
    let pid = h.pid("web");
    h.write(
        "web.kdl",
        &decl("web", "limits { memory-max \"64M\"; cpu-weight 10; }\n"),
    );
    let plan = h.ctl().reload().await;
    assert!(
        matches!(&plan.actions[..], [Action::Update { changed, .. }] if changed == &["limits"]),
        "{:?}",
        plan.actions
    );
    h.run_for(Duration::from_millis(10)).await;
    assert_eq!(h.pid("web"), pid, "the VM keeps running");
    assert_eq!(h.host.spawn_count("web"), 1);
    let applied = h.host.get().limits.clone();
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0].0, "web");
    assert_eq!(
        (applied[0].1.memory_max, applied[0].1.cpu_weight),
        (Some(64 << 20), Some(10))
    );
    // An unrelated in-place change does not touch the limits again.
    h.write(
        "web.kdl",
        &decl(
            "web",
            "limits { memory-max \"64M\"; cpu-weight 10; }\nrestart \"never\"\n",
        ),
    );
    h.ctl().reload().await;
    assert_eq!(h.host.get().limits.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_mass_apply_starts_a_batch_at_once_and_queues_the_rest() {
    let mut h = Harness::new("mass").await;
    let mut text = String::new();
    for i in 0..100 {
        text.push_str(&decl(&format!("s{i:03}"), ""));
    }
    h.write("many.kdl", &text);
    h.ctl().reload().await;
    let snap = h.ctl().snapshot();
    assert_eq!(snap.count(State::Booting), crate::controller::INLINE_STARTS);
    assert_eq!(
        snap.count(State::Pending),
        100 - crate::controller::INLINE_STARTS,
        "the rest waits, published as pending"
    );
    assert!(h.ctl().has_queued_starts());
    // Removed before its turn: never started.
    h.write("many.kdl", &text.replace(&decl("s099", ""), ""));
    h.ctl().reload().await;
    h.run_for(Duration::from_millis(50)).await;
    assert!(!h.ctl().has_queued_starts());
    let snap = h.ctl().snapshot();
    assert_eq!(snap.count(State::Running), 99);
    assert_eq!(h.host.spawn_count("s099"), 0);
    assert_eq!(h.host.get().spawns.len(), 99, "each started once");
}
