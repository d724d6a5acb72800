def execute_command(image):
    image_patch = ImagePatch(image)
    red_things = image_patch.find("red object")
    blue_circles = image_patch.find("blue circle")
    for red in red_things:
        if red.simple_query("What shape is this?") != "triangle":
            continue
        for circle in blue_circles:
            if red.horizontal_center < circle.horizontal_center:
                return "yes"
    return "no"
