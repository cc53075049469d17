//! Kahn's algorithm as a state machine the engine drives.
//!
//! Every job keeps a counter of its needs that have no result yet; a job whose
//! counter reaches zero joins the ready queue (or its matrix group's pending
//! queue when the group has a `max-parallel`). Each edge is looked at once,
//! each job queued once, so driving a whole plan costs O(jobs + edges).

use std::collections::VecDeque;

use crate::plan::Plan;

/// How a job ended (the strings of `needs.<job>.result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobResult {
    Success,
    Failure,
    Cancelled,
    Skipped,
}

impl JobResult {
    pub fn as_str(self) -> &'static str {
        match self {
            JobResult::Success => "success",
            JobResult::Failure => "failure",
            JobResult::Cancelled => "cancelled",
            JobResult::Skipped => "skipped",
        }
    }
}

/// Tracks which jobs are waiting, ready, running and finished.
#[derive(Debug, Clone)]
pub struct Scheduler {
    /// Needs of each job that have no result yet.
    waiting_on: Vec<usize>,
    /// Jobs that need each job.
    dependents: Vec<Vec<usize>>,
    results: Vec<Option<JobResult>>,
    taken: Vec<bool>,
    group_of: Vec<Option<usize>>,
    /// Ready jobs outside a limited group.
    ready: VecDeque<usize>,
    groups: Vec<GroupState>,
    /// Groups whose pending queue may be able to start a leg.
    dirty: Vec<usize>,
    finished: usize,
}

#[derive(Debug, Clone)]
struct GroupState {
    /// `None`: no limit.
    max_parallel: Option<usize>,
    running: usize,
    pending: VecDeque<usize>,
    dirty: bool,
}

impl Scheduler {
    pub fn new(plan: &Plan) -> Scheduler {
        let needs: Vec<Vec<usize>> = plan.jobs.iter().map(|j| j.needs.clone()).collect();
        let group_of: Vec<Option<usize>> = plan.jobs.iter().map(|j| j.group).collect();
        let limits: Vec<Option<u32>> = plan.groups.iter().map(|g| g.max_parallel).collect();
        Scheduler::from_graph(&needs, &group_of, &limits)
    }

    /// A scheduler for a bare graph: `needs[j]` are the jobs `j` needs,
    /// `group_of[j]` its group, `max_parallel[g]` each group's limit.
    pub fn from_graph(
        needs: &[Vec<usize>],
        group_of: &[Option<usize>],
        max_parallel: &[Option<u32>],
    ) -> Scheduler {
        let n = needs.len();
        let mut dependents = vec![Vec::new(); n];
        let mut waiting_on = vec![0; n];
        for (j, ns) in needs.iter().enumerate() {
            for &d in ns {
                if d < n && d != j {
                    dependents[d].push(j);
                    waiting_on[j] += 1;
                }
            }
        }
        let mut s = Scheduler {
            waiting_on,
            dependents,
            results: vec![None; n],
            taken: vec![false; n],
            group_of: (0..n)
                .map(|j| group_of.get(j).copied().flatten().filter(|g| *g < max_parallel.len()))
                .collect(),
            ready: VecDeque::new(),
            groups: max_parallel
                .iter()
                .map(|m| GroupState {
                    max_parallel: m.map(|m| m.max(1) as usize),
                    running: 0,
                    pending: VecDeque::new(),
                    dirty: false,
                })
                .collect(),
            dirty: Vec::new(),
            finished: 0,
        };
        for j in 0..n {
            if s.waiting_on[j] == 0 {
                s.make_ready(j);
            }
        }
        s
    }

    fn limited_group(&self, job: usize) -> Option<usize> {
        self.group_of[job].filter(|g| self.groups[*g].max_parallel.is_some())
    }

    fn make_ready(&mut self, job: usize) {
        match self.limited_group(job) {
            None => self.ready.push_back(job),
            Some(g) => {
                self.groups[g].pending.push_back(job);
                self.mark_dirty(g);
            }
        }
    }

    fn mark_dirty(&mut self, g: usize) {
        if !self.groups[g].dirty {
            self.groups[g].dirty = true;
            self.dirty.push(g);
        }
    }

    /// Jobs that became ready (every need finished) and may start now,
    /// honouring each matrix group's `max-parallel`. Each job is returned
    /// once; returned jobs count as running until [`Scheduler::finish`].
    pub fn take_ready(&mut self) -> Vec<usize> {
        let mut out = Vec::new();
        while let Some(j) = self.ready.pop_front() {
            if self.results[j].is_none() && !self.taken[j] {
                self.taken[j] = true;
                out.push(j);
            }
        }
        for g in std::mem::take(&mut self.dirty) {
            let group = &mut self.groups[g];
            group.dirty = false;
            let limit = group.max_parallel.unwrap_or(usize::MAX);
            while group.running < limit {
                let Some(j) = group.pending.pop_front() else {
                    break;
                };
                if self.results[j].is_none() && !self.taken[j] {
                    self.taken[j] = true;
                    group.running += 1;
                    out.push(j);
                }
            }
        }
        out
    }

    /// Records that a job ended (running, or never started: skipped/cancelled).
    pub fn finish(&mut self, job: usize, result: JobResult) {
        if job >= self.results.len() {
            return;
        }
        if self.results[job].is_some() {
            self.results[job] = Some(result);
            return;
        }
        self.results[job] = Some(result);
        self.finished += 1;
        if let Some(g) = self.limited_group(job) {
            if self.taken[job] {
                self.groups[g].running -= 1;
            }
            self.mark_dirty(g);
        }
        for k in 0..self.dependents[job].len() {
            let d = self.dependents[job][k];
            self.waiting_on[d] -= 1;
            if self.waiting_on[d] == 0 && self.results[d].is_none() {
                self.make_ready(d);
            }
        }
    }

    pub fn result(&self, job: usize) -> Option<JobResult> {
        self.results.get(job).copied().flatten()
    }

    /// True when every job has a result.
    pub fn is_finished(&self) -> bool {
        self.finished == self.results.len()
    }

    /// True when the job was returned by [`Scheduler::take_ready`].
    pub fn was_taken(&self, job: usize) -> bool {
        self.taken.get(job).copied().unwrap_or(false)
    }

    /// Jobs with no result yet (taken or not), in index order.
    pub fn unfinished(&self) -> Vec<usize> {
        (0..self.results.len()).filter(|j| self.results[*j].is_none()).collect()
    }
}
