//! Synthetic task: isotropic Gaussian inputs labelled by a random teacher.
//!
//! Draw order is fixed and documented so results are reproducible from the seed alone:
//! one Xoshiro256++ stream seeded with `seed` gives first the teacher β (D values), then
//! x_train row by row, then x_test row by row. Because the test points come last, changing
//! `p_test` leaves the teacher and the training set unchanged.

use crate::Dataset;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2};
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How targets are computed from the teacher pre-activation z = β·x/√D, with β ~ N(0, I_D),
/// so z ~ N(0, |β|²/D) ≈ N(0, 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Teacher {
    /// y = z: a linear target of unit variance.
    Linear,
    /// y = √2·relu(z): a single ReLU neuron, scaled so E[y²] = E[z²] ≈ 1 like the linear one.
    ReluNeuron,
}

impl Teacher {
    pub const ALL: [Teacher; 2] = [Teacher::Linear, Teacher::ReluNeuron];

    pub fn name(self) -> &'static str {
        match self {
            Teacher::Linear => "linear",
            Teacher::ReluNeuron => "relu-neuron",
        }
    }

    /// The target for teacher pre-activation `z`.
    pub fn target(self, z: f64) -> f64 {
        match self {
            Teacher::Linear => z,
            Teacher::ReluNeuron => std::f64::consts::SQRT_2 * z.max(0.0),
        }
    }

    /// Targets of the rows of `x` (points × D) for teacher weights `beta`: the target of
    /// z = β·x/√D for each row.
    pub fn label(self, beta: ArrayView1<f64>, x: ArrayView2<f64>) -> Array1<f64> {
        let scale = 1.0 / (beta.len() as f64).sqrt();
        x.dot(&beta).mapv(|z| self.target(z * scale))
    }
}

impl fmt::Display for Teacher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Teacher {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Teacher::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| format!("unknown teacher {s:?}; expected one of linear, relu-neuron"))
    }
}

/// Sizes, teacher and seed of a synthetic task: x ~ N(0, I_dim) for p_train + p_test points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GaussianTask {
    pub p_train: usize,
    pub p_test: usize,
    pub dim: usize,
    pub teacher: Teacher,
    pub seed: u64,
}

impl GaussianTask {
    /// Draws the task (see the module docs for the draw order). Test targets are known
    /// exactly, so `y_test` is always present. Callers bound the sizes first: the inputs
    /// take (p_train + p_test)·dim values of memory.
    pub fn generate(&self) -> Dataset {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(self.seed);
        let mut normals =
            |n: usize| -> Vec<f64> { (0..n).map(|_| rng.sample(StandardNormal)).collect() };
        let d = self.dim;
        let beta = Array1::from(normals(d));
        let x_train = Array2::from_shape_vec((self.p_train, d), normals(self.p_train * d))
            .expect("length is p_train·dim by construction");
        let x_test = Array2::from_shape_vec((self.p_test, d), normals(self.p_test * d))
            .expect("length is p_test·dim by construction");
        Dataset {
            y_train: self.teacher.label(beta.view(), x_train.view()),
            y_test: Some(self.teacher.label(beta.view(), x_test.view())),
            x_train,
            x_test,
        }
    }

    /// The teacher's weights β, the first `dim` draws of the task's stream (the same β that
    /// `generate` labels with). Online SGD uses it to label fresh inputs from the same task.
    pub fn teacher_weights(&self) -> Array1<f64> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(self.seed);
        (0..self.dim).map(|_| rng.sample(StandardNormal)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(teacher: Teacher) -> GaussianTask {
        GaussianTask {
            p_train: 6,
            p_test: 3,
            dim: 8,
            teacher,
            seed: 7,
        }
    }

    #[test]
    fn shapes_and_reproducibility() {
        let a = task(Teacher::Linear).generate();
        assert_eq!(a.x_train.dim(), (6, 8));
        assert_eq!(a.x_test.dim(), (3, 8));
        assert_eq!(a.y_train.len(), 6);
        assert_eq!(a.y_test.as_ref().map(|y| y.len()), Some(3));
        assert_eq!(a, task(Teacher::Linear).generate());
        let other = GaussianTask {
            seed: 8,
            ..task(Teacher::Linear)
        }
        .generate();
        assert_ne!(a.x_train, other.x_train);
    }

    #[test]
    fn test_set_size_does_not_change_training_set() {
        let a = task(Teacher::Linear).generate();
        let b = GaussianTask {
            p_test: 50,
            ..task(Teacher::Linear)
        }
        .generate();
        assert_eq!(a.x_train, b.x_train);
        assert_eq!(a.y_train, b.y_train);
        assert_eq!(a.x_test.row(0), b.x_test.row(0));
    }

    #[test]
    fn relu_teacher_is_the_scaled_positive_part_of_the_linear_one() {
        let lin = task(Teacher::Linear).generate();
        let relu = task(Teacher::ReluNeuron).generate();
        assert_eq!(lin.x_train, relu.x_train);
        for (z, y) in lin.y_train.iter().zip(&relu.y_train) {
            assert!((y - std::f64::consts::SQRT_2 * z.max(0.0)).abs() < 1e-15);
        }
    }

    /// With D = 400 the teacher norm |β|²/D is 1 ± 0.07, and 4000 samples estimate E[y²]
    /// to ± 0.03 (linear) or ± 0.05 (relu), so 0.25 is a wide but meaningful tolerance.
    #[test]
    fn targets_have_about_unit_second_moment() {
        for teacher in Teacher::ALL {
            let data = GaussianTask {
                p_train: 4000,
                p_test: 0,
                dim: 400,
                teacher,
                seed: 1,
            }
            .generate();
            let m2 = data.y_train.mapv(|y| y * y).mean().unwrap();
            assert!((m2 - 1.0).abs() < 0.25, "{teacher}: E[y²] = {m2}");
        }
    }

    /// Fresh inputs labelled with `teacher_weights` get the targets `generate` would give.
    #[test]
    fn teacher_weights_label_like_the_generated_task() {
        for teacher in Teacher::ALL {
            let t = task(teacher);
            let data = t.generate();
            let beta = t.teacher_weights();
            assert_eq!(beta.len(), 8);
            assert_eq!(
                teacher.label(beta.view(), data.x_test.view()),
                data.y_test.unwrap()
            );
            assert_eq!(
                teacher.label(beta.view(), data.x_train.view()),
                data.y_train
            );
        }
    }

    #[test]
    fn teacher_names_round_trip() {
        for t in Teacher::ALL {
            assert_eq!(t.name().parse::<Teacher>().unwrap(), t);
        }
        assert!(
            "quadratic"
                .parse::<Teacher>()
                .unwrap_err()
                .contains("relu-neuron")
        );
    }

    #[test]
    fn dataset_reduces_to_a_problem() {
        let problem = task(Teacher::Linear).generate().to_problem().unwrap();
        assert_eq!((problem.n_train(), problem.n_test()), (6, 3));
    }
}
