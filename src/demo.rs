//! The demo city: a generated Qingdao-scale set of car parks and simulated operators.
