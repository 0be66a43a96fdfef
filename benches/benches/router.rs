//! Router match cost with 10 and 1,000 routes.
//!
//! Baseline: a `HashMap<(&str, &str), usize>` exact-match lookup on method +
//! path, the floor for any router (it cannot capture `{params}`); the gap to
//! it is what path templates cost.

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use shardline_shard::router::{Match, Methods, Router};

fn build(n: usize) -> (Router<usize>, HashMap<(String, String), usize>) {
    let mut router = Router::new();
    let mut exact = HashMap::new();
    for i in 0..n {
        // A realistic mix: a literal prefix per route, a parameter, a tail.
        let template = format!("/api/v{}/resource{i}/{{id}}/details", i % 3);
        router
            .insert(Methods::Only(vec!["GET".into()]), &template, i)
            .expect("valid template");
        exact.insert(
            (
                "GET".to_string(),
                format!("/api/v{}/resource{i}/42/details", i % 3),
            ),
            i,
        );
    }
    (router, exact)
}

fn bench_router(c: &mut Criterion) {
    let mut group = c.benchmark_group("router_match");
    for n in [10usize, 1000] {
        let (router, exact) = build(n);
        let last = n - 1;
        let path = format!("/api/v{}/resource{last}/42/details", last % 3);
        group.bench_function(format!("shardline_{n}_routes"), |b| {
            b.iter(
                || match router.at(black_box("GET"), black_box(path.as_str())) {
                    Match::Found(v, p) => black_box((*v, p.get("id"))),
                    _ => unreachable!("route must match"),
                },
            )
        });
        let key = ("GET".to_string(), path.clone());
        group.bench_function(format!("baseline_hashmap_exact_{n}_routes"), |b| {
            b.iter(|| black_box(exact.get(black_box(&key))))
        });
        group.bench_function(format!("shardline_{n}_routes_not_found"), |b| {
            b.iter(|| {
                black_box(matches!(
                    router.at("GET", black_box("/nope/x")),
                    Match::NotFound
                ))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_router);
criterion_main!(benches);
