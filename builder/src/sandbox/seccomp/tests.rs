#![allow(clippy::unwrap_used)]

use super::*;

/// docker's default capabilities, as the sandbox keeps them.
const DOCKER_CAPS: u64 = (1 << 0)
    | (1 << 1)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 7)
    | (1 << 8)
    | (1 << 10)
    | (1 << 13)
    | (1 << 18)
    | (1 << 27)
    | (1 << 29)
    | (1 << 31);

/// Runs a classic BPF program on one `seccomp_data`, as the kernel would.
fn eval(prog: &[libc::sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_le_bytes());
    data[4..8].copy_from_slice(&arch.to_le_bytes());
    for (i, a) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
    }
    let word = |off: u32| {
        let o = off as usize;
        u32::from_le_bytes(data[o..o + 4].try_into().unwrap())
    };
    let (mut pc, mut acc) = (0usize, 0u32);
    loop {
        let i = prog[pc];
        pc += 1;
        let jump = |taken: bool| usize::from(if taken { i.jt } else { i.jf });
        match i.code {
            LD_W_ABS => acc = word(i.k),
            AND_K => acc &= i.k,
            RET_K => return i.k,
            JA => pc += i.k as usize,
            JEQ => pc += jump(acc == i.k),
            JGT => pc += jump(acc > i.k),
            JGE => pc += jump(acc >= i.k),
            other => panic!("unexpected instruction {other:#x}"),
        }
    }
}

/// x32 system calls are x86_64's audit architecture with this bit in the number.
const X32_BIT: u32 = 0x4000_0000;

const ALLOW: u32 = SECCOMP_RET_ALLOW;
const DENY: u32 = SECCOMP_RET_ERRNO | 1;
const NOSYS: u32 = SECCOMP_RET_ERRNO | 38;

#[cfg(target_arch = "x86_64")]
#[test]
fn docker_profile_verdicts() {
    let prog = compile(DOCKER_CAPS).unwrap();
    assert!(prog.len() < 1000, "{} instructions", prog.len());
    let x64 = |nr: u32, args: [u64; 6]| eval(&prog, AUDIT_ARCH_X86_64, nr, args);
    let none = [0u64; 6];
    let a0 = |v: u64| [v, 0, 0, 0, 0, 0];
    // Plain calls, the keyring, namespaces, mounts.
    assert_eq!(x64(0, none), ALLOW, "read");
    assert_eq!(x64(257, none), ALLOW, "openat");
    assert_eq!(x64(59, none), ALLOW, "execve");
    for (nr, name) in [
        (248, "add_key"),
        (250, "keyctl"),
        (249, "request_key"),
        (272, "unshare"),
        (165, "mount"),
        (155, "pivot_root"),
        (308, "setns"),
        (321, "bpf"),
        (425, "io_uring_setup"),
        (169, "reboot"),
    ] {
        assert_eq!(x64(nr, none), DENY, "{name}");
    }
    // chroot comes with CAP_SYS_CHROOT, which docker keeps; ptrace with kernel 4.8.
    assert_eq!(x64(161, none), ALLOW, "chroot");
    assert_eq!(x64(101, none), ALLOW, "ptrace");
    // clone: only without namespace flags; clone3 is ENOSYS so libcs fall back.
    assert_eq!(x64(56, a0(0x0001_1200)), ALLOW, "clone for a thread");
    assert_eq!(x64(56, a0(0x1000_0000)), DENY, "clone(CLONE_NEWUSER)");
    assert_eq!(x64(56, a0(0x4000_0000)), DENY, "clone(CLONE_NEWNET)");
    assert_eq!(x64(435, none), NOSYS, "clone3");
    // socket: every family but AF_ALG and AF_VSOCK, compared on all 64 bits.
    assert_eq!(x64(41, a0(2)), ALLOW, "AF_INET");
    assert_eq!(x64(41, a0(17)), ALLOW, "AF_PACKET");
    assert_eq!(x64(41, a0(39)), ALLOW, "AF_NFC");
    assert_eq!(x64(41, a0(44)), ALLOW, "AF_XDP");
    assert_eq!(x64(41, a0(38)), DENY, "AF_ALG");
    assert_eq!(x64(41, a0(40)), DENY, "AF_VSOCK");
    assert_eq!(x64(41, a0((1 << 32) | 2)), ALLOW, "high word set: above 40");
    // personality: five values only, on all 64 bits.
    assert_eq!(x64(135, a0(0xffff_ffff)), ALLOW);
    assert_eq!(x64(135, a0(8)), ALLOW);
    assert_eq!(x64(135, a0(0x0040_0000)), DENY, "ADDR_NO_RANDOMIZE");
    assert_eq!(x64(135, a0(0x1_0000_0000)), DENY);
    // Numbers above the profile's: ENOSYS; gaps within: EPERM.
    assert_eq!(x64(466, none), ALLOW, "removexattrat");
    assert_eq!(x64(467, none), NOSYS);
    assert_eq!(x64(100_000, none), NOSYS);
    // x32: the same audit architecture, bit 30 set.
    assert_eq!(x64(X32_BIT, none), ALLOW, "x32 read");
    assert_eq!(x64(X32_BIT | 250, none), DENY, "x32 keyctl");
    assert_eq!(x64(X32_BIT | 41, a0(40)), DENY, "x32 AF_VSOCK");
    assert_eq!(
        x64(X32_BIT | 41, a0((1 << 32) | 2)),
        ALLOW,
        "x32 compares 32 bits"
    );
    assert_eq!(x64(X32_BIT | 600, none), NOSYS);
    // i386: its own numbers.
    let x86 = |nr: u32, args: [u64; 6]| eval(&prog, AUDIT_ARCH_I386, nr, args);
    assert_eq!(x86(3, none), ALLOW, "i386 read");
    assert_eq!(x86(288, none), DENY, "i386 keyctl");
    assert_eq!(x86(310, none), DENY, "i386 unshare");
    assert_eq!(x86(120, a0(0x1000_0000)), DENY, "i386 clone(CLONE_NEWUSER)");
    assert_eq!(x86(120, a0(0x11)), ALLOW, "i386 clone");
    // Anything else is killed.
    assert_eq!(
        eval(&prog, AUDIT_ARCH_AARCH64, 0, none),
        SECCOMP_RET_KILL_PROCESS
    );
}

#[test]
fn capabilities_select_rules() {
    // With CAP_SYS_ADMIN, mount and unshare are allowed and clone takes any flags.
    let prog = compile(DOCKER_CAPS | (1 << CAP_SYS_ADMIN)).unwrap();
    let nr = |name: &str| number(name, Abi::X86_64).unwrap();
    if cfg!(target_arch = "x86_64") {
        let x64 = |n: u32, a: u64| eval(&prog, AUDIT_ARCH_X86_64, n, [a, 0, 0, 0, 0, 0]);
        assert_eq!(x64(nr("mount"), 0), ALLOW);
        assert_eq!(x64(nr("unshare"), 0x1000_0000), ALLOW);
        assert_eq!(x64(nr("clone"), 0x1000_0000), ALLOW);
        assert_eq!(x64(nr("clone3"), 0), ALLOW);
        // Without CAP_SYS_CHROOT, chroot goes.
        let prog = compile(DOCKER_CAPS & !(1 << CAP_SYS_CHROOT)).unwrap();
        assert_eq!(eval(&prog, AUDIT_ARCH_X86_64, nr("chroot"), [0; 6]), DENY);
    }
}

#[test]
fn the_table_is_sorted_and_knows_the_profile() {
    assert_eq!(number("read", Abi::X86_64), Some(0));
    assert_eq!(number("read", Abi::I386), Some(3));
    assert_eq!(number("read", Abi::X32), Some(X32_BIT));
    assert_eq!(number("openat", Abi::Aarch64), Some(56));
    assert_eq!(number("clone", Abi::Aarch64), Some(220));
    assert_eq!(number("clone3", Abi::X86_64), Some(435));
    assert_eq!(number("arch_prctl", Abi::Aarch64), None);
    // Every name of the profile is found on some ABI, but those of other hosts' ABIs.
    let elsewhere = ["recv", "send", "riscv_hwprobe"];
    for rule in PROFILE {
        for name in rule.names {
            let known = [Abi::X86_64, Abi::I386, Abi::X32, Abi::Aarch64]
                .iter()
                .any(|abi| number(name, *abi).is_some());
            assert!(known || elsewhere.contains(name), "{name}");
        }
    }
}
