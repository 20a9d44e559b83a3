//! `Stores` under a faulty device: fallbacks, faults and what a sync
//! failure means.
use super::*;
use crate::faulty::{FaultyDevice, Misbehave, On, Rule};
use crate::label::LABEL_BYTES;
use crate::sim::{FaultPlan, SimData};

const SEG: u64 = 1 << 20;

/// Three faulty devices of 4 segments, a mirror store and a `none`
/// store.
fn pool() -> (Stores, Vec<Arc<FaultyDevice>>, Pba, Pba) {
    let faulty: Vec<Arc<FaultyDevice>> = (0..3)
        .map(|i| {
            let d = Arc::new(SimData::new(FaultPlan::new(i)));
            d.ensure_len(LABEL_BYTES + 4 * SEG).unwrap();
            Arc::new(FaultyDevice::new(d, i))
        })
        .collect();
    let mut layout = Layout::new(SEG, &[4, 4, 4]);
    let m = layout.add_store(Redundancy::Mirror).unwrap();
    let n = layout.add_store(Redundancy::None).unwrap();
    let (mirror, _) = layout.extent_of(m).unwrap();
    let (none, _) = layout.extent_of(n).unwrap();
    let devices = faulty
        .iter()
        .map(|f| f.clone() as Arc<dyn DataFile>)
        .collect();
    (Stores::new(devices, layout), faulty, mirror, none)
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect()
}

#[test]
fn a_mirror_read_that_fails_on_one_copy_is_answered_by_the_other() {
    let (s, faulty, mirror, _) = pool();
    let data = pattern(3 * 4096 + 100, 1);
    s.write_at(&data, mirror.bytes() + 50).unwrap();
    let copies = s.layout().read().copies(mirror).unwrap();
    let first = copies[0].device;
    faulty[first as usize].inject(Rule::always(On::Read, Misbehave::Eio));
    let mut back = vec![0u8; data.len()];
    s.read_at(&mut back, mirror.bytes() + 50).unwrap();
    assert_eq!(back, data);
    assert!(s.errors(first).read.load(Ordering::Relaxed) >= 1);
    faulty[first as usize].clear();
    faulty[first as usize].vanish();
    let mut again = vec![0u8; data.len()];
    s.read_at(&mut again, mirror.bytes() + 50).unwrap();
    assert_eq!(again, data, "a vanished device: the other copy");
    s.write_at(&data, mirror.bytes())
        .expect("a write goes on to the copies left");
    assert!(s.errors(first).faulted(), "the vanished device is faulted");
    let mut back = vec![0u8; data.len()];
    s.read_at(&mut back, mirror.bytes()).unwrap();
    assert_eq!(back, data);
}

#[test]
fn a_single_copy_has_nothing_to_fall_back_on() {
    let (s, faulty, _, none) = pool();
    s.write_at(&pattern(4096, 2), none.bytes()).unwrap();
    let d = s.layout().read().copies(none).unwrap()[0].device;
    faulty[d as usize].inject(Rule::always(On::Read, Misbehave::Eio).times(1));
    let mut b = vec![0u8; 4096];
    assert_eq!(
        s.read_at(&mut b, none.bytes()).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    s.read_at(&mut b, none.bytes()).unwrap();
    assert_eq!(b, pattern(4096, 2));
}

#[test]
fn blocks_outside_every_store_are_refused() {
    let (s, _, mirror, _) = pool();
    let mut b = vec![0u8; 4096];
    let past = mirror.bytes() + 256 * 4096;
    assert_eq!(
        s.read_at(&mut b, past).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    assert!(s.ensure_len(u64::MAX).is_err());
}

#[test]
fn parity_stripes_are_written_whole_and_read_back_through_rot_and_losses() {
    let mut layout = Layout::new(SEG, &[1; 6]);
    let p = layout.add_store("parity:4+2".parse().unwrap()).unwrap();
    let (start, _) = layout.extent_of(p).unwrap();
    let sims: Vec<Arc<SimData>> = (0..6)
        .map(|i| {
            let d = Arc::new(SimData::new(FaultPlan::new(i)));
            d.ensure_len(LABEL_BYTES + SEG).unwrap();
            d
        })
        .collect();
    let devices = sims
        .iter()
        .map(|d| d.clone() as Arc<dyn DataFile>)
        .collect();
    let s = Stores::new(devices, layout);
    // Ten blocks from a stripe's start: three stripes, the last padded.
    let data = pattern(10 * 4096, 3);
    s.write_at(&data, start.bytes()).unwrap();
    let e = s
        .write_at(&data[..4096], start.plus(13).bytes())
        .unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
    let expect = sums::of_blocks(&data);
    let mut back = vec![0u8; data.len()];
    s.read_checked(&mut back, start.bytes(), &expect).unwrap();
    assert_eq!(back, data);
    // Unaligned plain reads too.
    let mut part = vec![0u8; 5000];
    s.read_at(&mut part, start.bytes() + 3000).unwrap();
    assert_eq!(part, data[3000..8000]);
    // Block 5 (column 1, row 1) rots: the read repairs it in place.
    let place = s.layout().read().copies(start.plus(5)).unwrap()[0];
    sims[place.device as usize]
        .write_at(&[0xee; 4096], place.offset)
        .unwrap();
    s.read_checked(&mut back, start.bytes(), &expect).unwrap();
    assert_eq!(back, data);
    assert_eq!(s.errors(place.device).checksum.load(Ordering::Relaxed), 1);
    assert_eq!(s.errors(place.device).repaired.load(Ordering::Relaxed), 1);
    let mut again = vec![0u8; 4096];
    sims[place.device as usize]
        .read_at(&mut again, place.offset)
        .unwrap();
    assert_eq!(again, data[5 * 4096..6 * 4096]);
    // Two devices lost (M = 2): every block still reads right.
    s.fault(0, "test".into());
    s.fault(3, "test".into());
    back.fill(0);
    s.read_checked(&mut back, start.bytes(), &expect).unwrap();
    assert_eq!(back, data);
    // Degraded writes go on to the four left.
    let more = pattern(4 * 4096, 9);
    s.write_at(&more, start.plus(12).bytes()).unwrap();
    let mut got = vec![0u8; more.len()];
    s.read_checked(&mut got, start.plus(12).bytes(), &sums::of_blocks(&more))
        .unwrap();
    assert_eq!(got, more);
    // A third loss is more than 4+2 tolerates.
    s.fault(1, "test".into());
    assert!(s.servable().is_err());
    assert!(s.read_checked(&mut back, start.bytes(), &expect).is_err());
}

#[test]
fn a_failed_sync_faults_the_device_and_fails_only_what_is_lost() {
    let (s, faulty, mirror, none) = pool();
    let single = s.layout().read().copies(none).unwrap()[0].device;
    let copies = s.layout().read().copies(mirror).unwrap();
    // A mirror device that the single copy is not on.
    let other = copies.iter().find(|c| c.device != single).unwrap().device;
    faulty[other as usize].inject(Rule::always(On::Sync, Misbehave::Eio).times(1));
    s.sync().expect("the mirror keeps a copy");
    assert!(s.errors(other).faulted());
    faulty[single as usize].inject(Rule::always(On::Sync, Misbehave::Eio).times(1));
    let e = s.sync().unwrap_err().to_string();
    assert!(e.contains("more than it tolerates"), "{e}");
}
