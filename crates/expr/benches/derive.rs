//! Bounded saturation of the catalogue derivations: time per derivation (criterion) and
//! peak heap (a counting global allocator), with each stage's e-graph size, iterations and
//! stop reason. Run with
//!   cargo bench -p dmft-expr --bench derive
//! and record the numbers in docs/performance.md.

use criterion::{Criterion, criterion_group, criterion_main};
use dmft_expr::derive;
use dmft_expr::spec::catalogue;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Counts live heap bytes and their high-water mark.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grow(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Relaxed) + bytes;
    PEAK.fetch_max(live, Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grow(new_size - layout.size());
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One derivation per spec, single-threaded, before any timing: the heap it adds at its
/// peak over what was live before, and the stage reports.
fn memory_and_stages() {
    println!("spec | peak heap (MiB) | stage: nodes / iterations / stop");
    for spec in catalogue() {
        let base = LIVE.load(Relaxed);
        PEAK.store(base, Relaxed);
        let d = derive(&spec).expect("catalogue spec derives");
        let peak = PEAK.load(Relaxed) - base;
        let stages: Vec<String> = d
            .stages
            .iter()
            .map(|s| format!("{}: {} / {} / {}", s.stage, s.nodes, s.iterations, s.stop))
            .collect();
        println!(
            "{} | {:.1} | {}",
            spec.name,
            peak as f64 / (1024.0 * 1024.0),
            stages.join("; ")
        );
        drop(d);
    }
}

fn bench(c: &mut Criterion) {
    memory_and_stages();
    let mut group = c.benchmark_group("derive");
    group.sample_size(10);
    for spec in catalogue() {
        group.bench_function(spec.name.clone(), |b| {
            b.iter(|| derive(black_box(&spec)).expect("derives"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
