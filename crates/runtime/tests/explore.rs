mod common;
use common::*;
use dmft_runtime::*;

#[test]
fn explore() {
    let prob = gaussian_problem(3, 1, 8, 1);
    for act in [Activation::Relu, Activation::Tanh, Activation::Linear] {
        let model = mup(1, act, 1.0);
        let sch = schedule(0.5, 20);
        let lazy = solve(&prob, &model, &sch, SolverKind::Lazy, &SolverOptions::default(), &no_progress).unwrap();
        for order in [8, 12, 16, 20] {
            let opts = SolverOptions { quadrature: order, ..Default::default() };
            let tq = solve(&prob, &model, &sch, SolverKind::TwoLayer, &opts, &no_progress).unwrap();
            println!("{act} order {order}: f(T)={:?} loss={}", tq.f_train.row(20), tq.loss[20]);
        }
        let opts = SolverOptions { sites: 400000, ..Default::default() };
        let t0 = std::time::Instant::now();
        let mc = solve(&prob, &model, &sch, SolverKind::TwoLayer, &opts, &no_progress).unwrap();
        println!("{act} MC: f(T)={:?} se={:?} {:?}", mc.f_train.row(20), mc.f_train_se.as_ref().unwrap().row(20), t0.elapsed());
        println!("{act} lazy f(T)={:?}", lazy.f_train.row(20));
        if act == Activation::Linear {
            let dl = solve(&prob, &model, &sch, SolverKind::DeepLinear, &opts, &no_progress).unwrap();
            println!("deep linear f(T)={:?} f_test={:?}", dl.f_train.row(20), dl.f_test.row(20));
        }
    }
}
