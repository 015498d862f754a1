"""Batch keys shared by the loader, the policy, training, evaluation and the server.

One training sample (a dict of tensors; the batch adds a leading B):

=========================  =====================  =====================================================
key                        shape, dtype            meaning
=========================  =====================  =====================================================
IMAGES                     (C, 3, H, W) uint8      latest frame of each camera at or before t
IMAGE_AGE                  (C,) float32            t - stamp of that frame, seconds (>= 0)
IMAGE_MASK                 (C,) bool               camera present (padding to the max camera count)
STATE                      (T, D) float32          joint positions, canonical [-1, 1], last T samples
                                                   at or before t, oldest first, padded to D = max_dof
STATE_AGE                  (T,) float32            t - stamp of each state sample, seconds
STATE_MASK                 (T,) bool               history sample exists
JOINT_DESCRIPTORS          (D, 12) float32         EmbodimentSpec.descriptors(), padded
JOINT_MASK                 (D,) bool               actuated joint present
INSTRUCTION                (L,) int64              instruction tokens (gen_theta_model.tokenizer)
INSTRUCTION_MASK           (L,) bool               token present
ACTION                     (H, D) float32          commanded positions, canonical, at t + k/rate, k < H
ACTION_MASK                (H,) bool               step inside the episode
KEYPOSE                    (D,) float32            commanded positions, canonical, at the episode's next
                                                   gripper event after t (its last step when none
                                                   follows): where the next grasp or release happens
OBJECTS                    (S, 3) float32          training only: positions (m, the recording's world
                                                   frame) of the scene's objects at t, where the source
                                                   published them (the sim's object_poses), padded to
                                                   S = MAX_OBJECTS
OBJECTS_MASK               (S,) bool               object present (all False when none were recorded)
DELAY                      () int64                committed-prefix length d: ACTION[:d] is given to
                                                   the model, the loss is on ACTION[d:]
EMBODIMENT_INDEX           () int64                index into the dataset's embodiment name list
EPISODE_INDEX              () int64                index into the dataset index (DatasetInfo.episodes)
=========================  =====================  =====================================================

Time t is the start of the action chunk. Ages make the asynchronous streams
explicit: every observation token knows how old it is when the chunk starts.
"""

IMAGES = "observation.images"
IMAGE_AGE = "observation.images.age"
IMAGE_MASK = "observation.images.mask"
STATE = "observation.state"
STATE_AGE = "observation.state.age"
STATE_MASK = "observation.state.mask"
JOINT_DESCRIPTORS = "embodiment.joint_descriptors"
JOINT_MASK = "embodiment.joint_mask"
INSTRUCTION = "instruction.tokens"
INSTRUCTION_MASK = "instruction.mask"
ACTION = "action"
ACTION_MASK = "action.mask"
KEYPOSE = "action.keypose"
OBJECTS = "objects.position"
OBJECTS_MASK = "objects.mask"
MAX_OBJECTS = 8  # object slots of OBJECTS; a scene with more is an error at training time
DELAY = "harmonic.delay"
EMBODIMENT_INDEX = "embodiment.index"
EPISODE_INDEX = "episode.index"

OBSERVATION_KEYS = (
    IMAGES,
    IMAGE_AGE,
    IMAGE_MASK,
    STATE,
    STATE_AGE,
    STATE_MASK,
    JOINT_DESCRIPTORS,
    JOINT_MASK,
    INSTRUCTION,
    INSTRUCTION_MASK,
)
