mod common;
use common::*;
use dmft_runtime::*;

#[test]
fn explore() {
    let prob = gaussian_problem(3, 1, 8, 1);
    for (depth, gamma0) in [(2, 1.0), (3, 1.0), (2, 2.0)] {
        let model = mup(depth, Activation::Linear, gamma0);
        let sch = schedule(0.5, 20);
        let dl = solve(&prob, &model, &sch, SolverKind::DeepLinear, &SolverOptions::default(), &no_progress).unwrap();
        let t0 = std::time::Instant::now();
        let opts = SolverOptions { sites: 40000, ..Default::default() };
        let mc = solve(&prob, &model, &sch, SolverKind::DeepNonlinear, &opts, &no_progress).unwrap();
        let se = mc.f_train_se.as_ref().unwrap();
        for k in [1, 5, 10, 20] {
            println!("L={depth} g={gamma0} k={k}: dl={:.5} mc={:.5} se={:.5} | test dl={:.5} mc={:.5} se={:.5}",
                dl.f_train.row(k), mc.f_train.row(k), se.row(k), dl.f_test.row(k), mc.f_test.row(k), mc.f_test_se.as_ref().unwrap().row(k));
        }
        println!("time {:?}", t0.elapsed());
    }
}
