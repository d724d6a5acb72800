def execute_command(image):
    image_patch = ImagePatch(image)
    triangles = image_patch.find("triangle")
    circles = image_patch.find("circle")
    for triangle in triangles:
        if triangle.simple_query("What shape is this?") != "triangle":
            continue
        for circle in circles:
            if triangle.horizontal_center < circle.horizontal_center:
                return "yes"
    return "no"
